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
from typing import Iterable, Iterator, Tuple, Union

import nibabel as nib
import numpy as np

from .errors import AtlasregError
from .volume import Volume, image, label_map

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_VOXELS = 2**31  # about 1290^3: far beyond any brain MRI; a header claiming more is corrupt
#: peak memory of ``segment``/``register`` per voxel of the target's (fixed image's) grid, measured with a
#: 24^3 atlas on 96^3 and 192^3 uint8 targets (the slope: affine 44, svf 69, voxelmorph 69 bytes), rounded up
TARGET_BYTES_PER_VOXEL = 80
NAME_MAX = 255  # bytes in one file name: the limit of ext4, XFS, APFS, NTFS
GZIP_MAX_RATIO = 1032  # deflate cannot compress better than this: bounds what a .gz file can hold
_HOST = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()) or "host"
#: temporary files of atomic_path: .NAME.atlasreg-HOST-PID.RANDOM[SUFFIX]
_TEMP = re.compile(r"\..+\.atlasreg-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+(\.nii\.gz|\.[A-Za-z0-9]+)?")


def _check_nifti_path(path: Path) -> None:
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise AtlasregError(f"{path}: expected a NIfTI file ending in .nii or .nii.gz")


def load(path: str | os.PathLike, labels: bool = False, bytes_per_voxel: int = 0) -> Volume:
    """Read a NIfTI volume: an image as float32, or with ``labels=True`` a label map as int32.

    A trailing axis of length 1 (shape X×Y×Z×1) is dropped; anything else not 3-D is refused.
    ``bytes_per_voxel``: the memory the caller's work needs per voxel of this volume's grid (e.g.
    ``TARGET_BYTES_PER_VOXEL``); a volume too large for the memory available is refused before
    its data is read (see :func:`check_memory`).
    """
    path = Path(path)
    if not path.exists():
        raise AtlasregError(f"{path}: {'a broken symlink or a symlink loop' if path.is_symlink() else 'no such file'}")
    _check_nifti_path(path)
    try:
        with _nibabel_quiet():
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise AtlasregError(f"{path}: not a readable NIfTI file ({exc})") from None
    _check_data_size(path, img)
    _check_voxel_sizes(path, img)
    if bytes_per_voxel:
        check_memory(math.prod(int(n) for n in img.shape[:3]), bytes_per_voxel, str(path))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise AtlasregError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    return from_array(data, img.affine, labels, str(path))


@contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """nibabel's header messages ("pixdim[1,2,3] should be positive; setting to abs ...") off: the
    problems it 'fixes' silently are refused by our own checks, in one line."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


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


def _check_voxel_sizes(path: Path, img) -> None:
    """Refuse a header whose voxel sizes (pixdim) are zero, negative or not finite when no sform
    gives the grid instead: nibabel silently replaces them (by 1, or their absolute value), and a
    volume on a guessed grid gives silently wrong results."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header) or int(header["sform_code"]) > 0:
        return
    with nib.openers.ImageOpener(str(path)) as f:  # the header as stored: nibabel's load has 'fixed' it
        raw = type(header).from_fileobj(f, check=False)
    sizes = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise AtlasregError(f"{path}: header gives voxel sizes {', '.join(f'{v:g}' for v in sizes)} (pixdim) and no sform: "
                            "voxel sizes must be positive; fix the header")


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the system's available memory, the
    cgroup's limit less its usage, and the address-space limit (ulimit -v) less what is mapped."""
    import resource

    limits = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append(meminfo["MemAvailable"] * 1024)
    else:  # not Linux: physical memory
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        cgroup_max = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup_max != "max":
            limits.append(int(cgroup_max) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _read_fields("/proc/self/status").get("VmSize", 0) * 1024)
    return max(0, min(limits))


def _read_fields(path: str) -> dict[str, int]:
    """``Name: 123 kB`` lines of a /proc file as {name: number}; {} where there is no such file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        if value.split() and value.split()[0].isdigit():
            fields[name] = int(value.split()[0])
    return fields


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB blocks): a model's checksum, a cache's key."""
    import hashlib

    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def glob_paths(patterns: Iterable[str], what: str) -> list[Path]:
    """Files matching each glob pattern (or literal path), in sorted order; none matching is an error."""
    import glob

    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise AtlasregError(f"{what}: nothing matches {pattern!r}")
        paths += [Path(p) for p in found]
    return paths


def glob_matches(pattern: str, path: str | os.PathLike) -> bool:
    """Whether ``glob.glob(pattern)`` would list ``path`` were it there (compared name by name, both made absolute)."""
    import fnmatch

    want, have = Path(os.path.abspath(os.path.expanduser(pattern))).parts, Path(os.path.abspath(path)).parts
    return len(want) == len(have) and all(fnmatch.fnmatchcase(name, part) for name, part in zip(have, want))


def is_pattern_or_folder(target: str) -> bool:
    """Whether ``target`` names several files: a glob pattern or a folder."""
    return any(c in target for c in "*?[") or Path(target).is_dir()


def expand_targets(targets: Iterable[str]) -> list[Path]:
    """Files, every .nii/.nii.gz file of a folder, or what a glob matches, in the order given (sorted within)."""
    paths: list[Path] = []
    for target in targets:
        if Path(target).is_dir():
            found = sorted(p for p in Path(target).iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise AtlasregError(f"{target}: folder holds no .nii or .nii.gz file")
            paths += found
        elif any(c in target for c in "*?["):
            paths += glob_paths((target,), "targets")
        elif not Path(target).exists():
            raise AtlasregError(f"{target}: no such file")
        else:
            paths.append(Path(target))
    return paths


def check_memory(voxels: int, bytes_per_voxel: int, what: str) -> None:
    """Refuse, before any work, a grid whose work would need more memory than is available (rather
    than a MemoryError, or the system killing the process, minutes later)."""
    needed, available = voxels * bytes_per_voxel, available_memory()
    if needed > available:
        raise AtlasregError(f"{what}: {voxels} voxels need about {needed / 2**30:.1f} GiB ({bytes_per_voxel} bytes per voxel) "
                            f"but only {available / 2**30:.1f} GiB is available: resample it to a coarser grid (e.g. 1 mm) first")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), suffixes: tuple[str, ...] | None = NIFTI_SUFFIXES,
                 parents: bool = False) -> Path:
    """Refuse, before any work starts, an output we could not write or that would clobber an input.

    ``path`` is a file with one of ``suffixes``, or a folder when ``suffixes`` is None (it may
    exist; with ``parents``, so may its parent folders not, as they will be made). Its folder must
    exist and be writable; the output must not be any of ``inputs`` (compared as files, so ``./x``,
    symlinks and hard links are caught).
    """
    out = Path(path)
    if suffixes is None:
        if out.exists() and not out.is_dir():
            raise AtlasregError(f"{out}: exists and is not a folder")
        folder = out if out.is_dir() else out.parent
        while parents and not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if parents and folder.exists() and not folder.is_dir():
            raise AtlasregError(f"{folder}: exists and is not a folder")
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
    check_outputs([out], inputs)
    return out


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is any of ``inputs``, compared as files (so ``./x``, symlinks and hard
    links are caught); each path is looked at once, so a study of thousands of targets checks fast."""
    given: dict[object, str | os.PathLike] = {}
    for path in inputs:
        given.update(dict.fromkeys(_file_keys(Path(path)), path))
    for out in outputs:
        for key in _file_keys(Path(out)):
            if key in given:
                raise AtlasregError(f"{out}: output would overwrite an input ({given[key]})")


def check_file_name(name: str, what: str) -> str:
    """``name`` if a file system takes it as one file name (at most ``NAME_MAX`` bytes), before any work."""
    if len(name.encode()) > NAME_MAX:
        raise AtlasregError(f"{what}: the file name {name[:40]}... is {len(name.encode())} bytes long; "
                            f"file systems take at most {NAME_MAX}: shorten it")
    return name


def _file_keys(path: Path) -> list[object]:
    """What identifies the file ``path`` names: its resolved path and, if it exists, its (device, inode)."""
    try:
        keys: list[object] = [path.resolve()]
    except (OSError, RuntimeError):  # a symlink loop: it names no file
        return []
    try:
        info = path.stat()
        keys.append((info.st_dev, info.st_ino))
    except OSError:  # does not exist (yet)
        pass
    return keys


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
    # the name shortened in the temporary's own, so that any name the file system takes has a temporary
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.atlasreg-{_HOST}-{os.getpid()}.", suffix=suffix, dir=path.parent)
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


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`); ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as NIfTI (labels as int32, images as float32), atomically."""
    path = Path(path)
    _check_nifti_path(path)
    img = volume.to_nibabel()
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


#: a Volume, a NIfTI path, a nibabel image, or an (array, affine) pair
ImageLike = Union[Volume, str, os.PathLike, nib.spatialimages.SpatialImage, Tuple[np.ndarray, np.ndarray]]


def as_volume(value: ImageLike, labels: bool, what: str, bytes_per_voxel: int = 0) -> Volume:
    """A Volume from any ``ImageLike`` (a Volume as it is; anything else read as an image, or with
    ``labels`` as a label map); ``bytes_per_voxel`` as for :func:`load`."""
    if isinstance(value, (str, os.PathLike)):
        return load(value, labels=labels, bytes_per_voxel=bytes_per_voxel)
    if isinstance(value, Volume):
        volume = value
    elif isinstance(value, nib.spatialimages.SpatialImage):
        volume = from_array(np.asanyarray(value.dataobj), value.affine, labels, what)
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
        volume = from_array(value[0], np.asarray(value[1]), labels, what)
    else:
        raise AtlasregError(f"{what}: expected a path, a Volume, a nibabel image or (array, affine), got {type(value).__name__}")
    if bytes_per_voxel:
        check_memory(volume.array.size, bytes_per_voxel, what)
    return volume


def as_image(value: ImageLike, what: str = "image", bytes_per_voxel: int = 0) -> Volume:
    """An intensity-image Volume from any ``ImageLike``; ``bytes_per_voxel`` as for :func:`atlasreg.io.load`."""
    volume = as_volume(value, False, what, bytes_per_voxel)
    if volume.is_labels:
        raise AtlasregError(f"{what}: expected an intensity image, got a label map")
    if not volume.array.any():
        raise AtlasregError(f"{what}: image is empty (all zero)")
    if min(volume.shape) < 2:  # registration's pyramids and sampling grids need two voxels an axis
        raise AtlasregError(f"{what}: a 3-D image needs at least 2 voxels along each axis, got {'x'.join(map(str, volume.shape))} "
                            "(a single slice?)")
    return volume


def as_target(value: ImageLike, what: str = "target image") -> Volume:
    """The image whose grid the work runs on (a target, a fixed image): one too large for the memory
    available (:data:`atlasreg.io.TARGET_BYTES_PER_VOXEL`) is refused, from a file before it is read."""
    return as_image(value, what, TARGET_BYTES_PER_VOXEL)


def as_labels(value: ImageLike, what: str = "label map") -> Volume:
    """A label-map Volume from any ``ImageLike``."""
    volume = as_volume(value, True, what)
    if not volume.is_labels:
        raise AtlasregError(f"{what}: expected a label map, got an intensity image")
    if not volume.array.any():
        raise AtlasregError(f"{what}: label map is empty (no non-zero label)")
    return volume
