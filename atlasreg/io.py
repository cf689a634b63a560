"""NIfTI in and out with nibabel. Affine preserved; writes are atomic (temp file + rename);
outputs are checked before work starts (never an input, a folder we can write to)."""

from __future__ import annotations

import math
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import nibabel as nib
import numpy as np

from .errors import AtlasregError
from .volume import Volume, image, label_map

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_VOXELS = 2**31  # about 1290^3: far beyond any brain MRI; a header claiming more is corrupt
GZIP_MAX_RATIO = 1032  # deflate cannot compress better than this: bounds what a .gz file can hold
_HOST = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()) or "host"
#: temporary files of atomic_path: .NAME.atlasreg-HOST-PID.RANDOM[SUFFIX]
_TEMP = re.compile(r"\..+\.atlasreg-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+(\.nii\.gz|\.[A-Za-z0-9]+)?")


def _check_nifti_path(path: Path) -> None:
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise AtlasregError(f"{path}: expected a NIfTI file ending in .nii or .nii.gz")


def load(path: str | os.PathLike, labels: bool = False) -> Volume:
    """Read a NIfTI volume: an image as float32, or with ``labels=True`` a label map as int32.

    A trailing axis of length 1 (shape X×Y×Z×1) is dropped; anything else not 3-D is refused.
    """
    path = Path(path)
    if not path.exists():
        raise AtlasregError(f"{path}: no such file")
    _check_nifti_path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise AtlasregError(f"{path}: not a readable NIfTI file ({exc})") from None
    _check_data_size(path, img)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise AtlasregError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    return from_array(data, img.affine, labels, str(path))


def from_array(data: np.ndarray, affine: np.ndarray, labels: bool = False, what: str = "volume") -> Volume:
    """An in-memory array and affine (or a nibabel image's) checked as ``load`` checks a file:
    a trailing axis of length 1 dropped, 3-D, then an image or, with ``labels=True``, a label map."""
    data = np.asanyarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise AtlasregError(f"{what}: expected a 3-D volume, got shape {data.shape}")
    try:
        if labels:
            return label_map(data, affine)
        return image(data, affine)
    except AtlasregError as exc:
        raise AtlasregError(f"{what}: {exc}") from None


def _check_data_size(path: Path, img) -> None:
    """Refuse a header whose data could not be in the file (or would not fit in memory) before reading it.

    An uncompressed file must hold offset + voxels x bytes per voxel; a .gz file at most
    ``GZIP_MAX_RATIO`` times its own size. A corrupt header would otherwise allocate gigabytes first.
    """
    voxels = math.prod(int(n) for n in img.shape)
    if voxels > MAX_VOXELS:
        raise AtlasregError(f"{path}: header claims {voxels} voxels (shape {img.shape}); more than {MAX_VOXELS} is not a brain image")
    needed = voxels * img.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if needed > GZIP_MAX_RATIO * size:
            raise AtlasregError(f"{path}: header claims {needed} bytes of data (shape {img.shape}) but the "
                                f"{size}-byte compressed file cannot hold that much: corrupt or truncated")
    elif needed + int(img.header.get("vox_offset", 0)) > size:
        raise AtlasregError(f"{path}: header claims {needed} bytes of data (shape {img.shape}) but the file "
                            f"has only {size} bytes: corrupt or truncated")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), suffixes: tuple[str, ...] | None = NIFTI_SUFFIXES) -> Path:
    """Refuse, before any work starts, an output we could not write or that would clobber an input.

    ``path`` is a file with one of ``suffixes``, or a folder when ``suffixes`` is None (it may
    exist). Its folder must exist and be writable; the output must not be any of ``inputs``
    (compared as files, so ``./x``, symlinks and hard links are caught).
    """
    out = Path(path)
    if suffixes is None:
        if out.exists() and not out.is_dir():
            raise AtlasregError(f"{out}: exists and is not a folder")
        folder = out if out.is_dir() else out.parent
    else:
        if out.is_dir():
            raise AtlasregError(f"{out}: is a folder; give a file name ending in {' or '.join(suffixes)}")
        if not out.name.endswith(suffixes):
            raise AtlasregError(f"{out}: output must end in {' or '.join(suffixes)}")
        folder = out.parent
    if not folder.is_dir():
        raise AtlasregError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AtlasregError(f"{folder}: output folder is not writable")
    for given in inputs:
        if _same_file(out, Path(given)):
            raise AtlasregError(f"{out}: output would overwrite an input ({given})")
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files atomic_path left in ``folder`` when its process died (e.g. SIGKILL mid-write).

    Only files named by atomic_path on this host whose process is gone: a write in progress elsewhere is kept.
    """
    for entry in folder.glob(".*.atlasreg-*"):
        match = _TEMP.fullmatch(entry.name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            entry.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Temporaries that killed processes left in the folder are removed first.
    """
    path = Path(path)
    if not path.parent.exists():
        raise AtlasregError(f"{path.parent}: output folder does not exist")
    _remove_stale_temporaries(path.parent)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.atlasreg-{_HOST}-{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def save(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as NIfTI (labels as int32, images as float32), atomically."""
    path = Path(path)
    _check_nifti_path(path)
    dtype = np.int32 if volume.is_labels else np.float32
    img = nib.Nifti1Image(volume.array.astype(dtype), volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    if volume.is_labels:
        img.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
