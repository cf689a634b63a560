"""Volume: a 3-D array on a grid defined by a voxel-to-world (RAS mm) affine, and whether it is
an intensity image or a label map.

That kind is an explicit field, never guessed from the dtype (an int16 T1 is an image), so every
operation (resampling, warping, saving) picks the right rule without being told.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from .errors import AtlasregError

LABEL_DTYPE = np.int32


@dataclass(frozen=True)
class Volume:
    """A 3-D array plus the 4x4 affine mapping voxel indices (i, j, k) to RAS millimetres.

    ``is_labels``: a label map (integer array, resampled by nearest neighbour or one-hot, saved as
    int32) rather than an intensity image (resampled linearly, saved as float32).
    """

    array: np.ndarray
    affine: np.ndarray
    is_labels: bool = field(kw_only=True)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise AtlasregError("affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-8:
            raise AtlasregError("affine is singular (zero voxel size)")
        object.__setattr__(self, "affine", affine)
        if self.array.ndim != 3:
            raise AtlasregError(f"expected a 3-D volume, got {self.array.ndim}-D with shape {self.array.shape}")
        if self.is_labels and not np.issubdtype(self.array.dtype, np.integer):
            raise AtlasregError(f"a label map needs an integer array, got {self.array.dtype}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid and kind, new data."""
        return Volume(array, self.affine, is_labels=self.is_labels)

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def labels(self) -> np.ndarray:
        """Sorted non-zero labels present."""
        values = np.unique(self.array)
        return values[values != 0]

    def to_nibabel(self) -> nib.Nifti1Image:
        """A NIfTI-1 image as :func:`atlasreg.save` writes it: the affine as both qform and sform
        (code 1, scanner), a label map as int32 with the NIfTI label intent, an image as float32."""
        img = nib.Nifti1Image(self.array.astype(LABEL_DTYPE if self.is_labels else np.float32), self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        if self.is_labels:
            img.header.set_intent("label")
        return img


def image(array: np.ndarray, affine: np.ndarray) -> Volume:
    """An intensity image: float32, every value finite."""
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise AtlasregError("image contains NaN or infinite intensities")
    return Volume(array, affine, is_labels=False)


def label_map(array: np.ndarray, affine: np.ndarray) -> Volume:
    """A label map: whole, non-negative numbers stored as int32, at least one non-zero label."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise AtlasregError("label map holds non-integer values")
    if array.size and array.min() < 0:
        raise AtlasregError("label map holds negative labels")
    largest = np.iinfo(LABEL_DTYPE).max
    if array.size and array.max() > largest:  # converting would wrap 2^32 + 3 round to label 3
        raise AtlasregError(f"label map holds labels above {largest} (largest {array.max():.0f}): not a label map atlasreg can store")
    array = array.astype(LABEL_DTYPE)
    if not np.any(array):
        raise AtlasregError("label map is empty (no non-zero label)")
    return Volume(array, affine, is_labels=True)


def foreground(array: np.ndarray) -> np.ndarray:
    """The head or brain: voxels above the Otsu threshold, enclosed holes (dark ventricles) filled.

    Otsu, not ``!= 0``: on an image with a noisy background (a raw scan, a synthesized image whose
    noise is clipped at 0) most non-zero voxels can be background (84 % on a synthesized 1 mm
    T1 of shared subject01). On a skull-stripped scan (background exactly 0) the threshold falls
    between 0 and the tissue.
    """
    from scipy.ndimage import binary_fill_holes
    from skimage.filters import threshold_otsu

    return binary_fill_holes(array > threshold_otsu(array))


def zscore(volume: Volume, mask: np.ndarray | None = None) -> Volume:
    """Every voxel rescaled by the mean and standard deviation of the image's ``foreground``.

    The one z-score of atlasreg (learned backends' inputs, dataset preprocessing, weighted
    voting). Only the statistics come from the foreground: the same linear map applies to every
    voxel, so no tissue is masked away (a mask that dropped dark CSF would erase its contrast);
    a background of exactly 0 maps to one constant value. ``mask``: the image's ``foreground``,
    when the caller has computed it already.
    """
    array = volume.array
    if array.min() == array.max():
        raise AtlasregError("image is empty (all zero)" if not array.any() else "cannot z-score an image of constant intensity")
    values = array[foreground(array) if mask is None else mask].astype(np.float64)
    std = values.std()
    if std == 0:
        raise AtlasregError("cannot z-score: every foreground voxel has the same intensity")
    return volume.with_array(((array - values.mean()) / std).astype(np.float32))
