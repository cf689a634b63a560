"""NIfTI in and out with nibabel. Affine preserved; writes are atomic (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from .errors import AtlasregError
from .volume import Volume, image, label_map

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise AtlasregError(f"{path}: not a readable NIfTI file ({exc})") from None
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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    if not path.parent.exists():
        raise AtlasregError(f"{path.parent}: output folder does not exist")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
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
