"""Synthetic MRI from label maps, in the spirit of SynthSeg / SynthMorph.

There are no acquired scans in this project: images are painted from anatomical label maps. Each
label gets an intensity mean and std (a Gaussian mixture), then the image goes through the
corruptions a scanner adds: partial-volume blur, a smooth multiplicative bias field, noise and,
optionally, a coarser acquisition resolution. A smooth random deformation of the label map can be
applied first to make new anatomies. Everything is drawn from ``np.random.default_rng(seed)``, so a
seed reproduces the image byte for byte.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .lut import aseg_tissue
from .volume import Volume, image, label_map

NON_BRAIN = 100  # labels >= 100 are skull, scalp, eyes, ... (not brain)
CONTRASTS = ("t1", "t2", "random")
MAX_LABEL = 65535  # the per-label parameter table is indexed by label value

_BIAS_GRID = 4  # control points per axis of the bias field
_DEFORM_GRID = 6  # control points per axis of the random deformation
_T1_JITTER = 0.05  # relative jitter of the T1 means per seed
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

# T1-weighted tissue intensities (mean, std) on a 0-150 scale; labels are FreeSurfer aseg.
_T1_TISSUES: dict[tuple[int, ...], tuple[float, float]] = {
    (2, 41, 7, 46, 85): (110.0, 4.0),  # cerebral / cerebellar white matter, optic chiasm
    (13, 52, 16): (100.0, 4.0),  # pallidum, brain stem
    (28, 60): (97.0, 4.0),  # ventral diencephalon
    (10, 49): (92.0, 4.0),  # thalamus
    (12, 51): (82.0, 5.0),  # putamen
    (11, 50, 8, 47): (78.0, 5.0),  # caudate, cerebellar cortex
    (26, 58): (76.0, 5.0),  # accumbens
    (3, 42): (75.0, 5.0),  # cerebral cortex
    (18, 54): (74.0, 5.0),  # amygdala
    (17, 53): (72.0, 5.0),  # hippocampus
    (25, 57, 77): (60.0, 6.0),  # lesions, white-matter hypointensities
    (4, 5, 14, 15, 24, 43, 44, 72): (25.0, 5.0),  # CSF and ventricles
}
# T2-weighted (mean, std): fluid bright, white matter dark; the same 0-150 scale.
_T2_TISSUES: dict[tuple[int, ...], tuple[float, float]] = {
    (2, 41, 7, 46, 85): (55.0, 4.0),
    (13, 52, 16): (60.0, 4.0),
    (28, 60): (62.0, 4.0),
    (10, 49): (68.0, 4.0),
    (12, 51): (78.0, 5.0),
    (11, 50, 8, 47): (85.0, 5.0),
    (26, 58): (85.0, 5.0),
    (3, 42): (90.0, 5.0),
    (18, 54): (92.0, 5.0),
    (17, 53): (95.0, 5.0),
    (25, 57, 77): (120.0, 6.0),
    (4, 5, 14, 15, 24, 43, 44, 72): (145.0, 5.0),
}
_PRESETS = {"t1": _T1_TISSUES, "t2": _T2_TISSUES}
_T1_OTHER_BRAIN = (75.0, 5.0)  # any other label in 1-99: grey-matter-like
_T1_NON_BRAIN_MEAN = (10.0, 150.0)  # range drawn per label: dark (bone) to bright (fat)
_T1_NON_BRAIN_STD = (3.0, 10.0)
_RANDOM_MEAN = (0.0, 255.0)
_RANDOM_STD = (1.0, 25.0)


def _strip(array: np.ndarray) -> np.ndarray:
    """Non-brain labels (>= 100) to background."""
    return np.where(array >= NON_BRAIN, 0, array).astype(array.dtype)


def skull_strip(labels: Volume) -> Volume:
    """Labels >= 100 (non-brain tissue) set to 0 — the convention of VoxelMorph/SynthMorph."""
    if not labels.is_labels:
        raise AtlasregError("skull_strip needs a label map, got an image")
    try:
        return label_map(_strip(labels.array), labels.affine)
    except AtlasregError:
        raise AtlasregError("label map has no brain labels (1-99) left after skull stripping") from None


def preset_means(labels: np.ndarray, contrast: str) -> np.ndarray:
    """The ``contrast`` preset's mean intensity (0-150 scale, no jitter) of each label value in
    ``labels`` (``t1`` or ``t2``; other brain labels are cortex-like, background and non-brain 0)."""
    other = _T1_OTHER_BRAIN if contrast == "t1" else _T2_TISSUES[(3, 42)]
    table = {label: mean for tissue_labels, (mean, _) in _PRESETS[contrast].items() for label in tissue_labels}
    return np.array([table.get(int(v), other[0]) if 0 < v < NON_BRAIN else 0.0 for v in labels], np.float32)


def _label_parameters(rng: np.random.Generator, contrast: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every label 0..MAX_LABEL, indexed by label value (background stays 0).

    The table is always drawn whole, so neither a label's parameters nor the draws after them
    depend on which labels are present: one seed gives the same contrast on any label map,
    skull-stripped or not.
    """
    u = rng.random((MAX_LABEL + 1, 2))
    if contrast == "random":
        mean = _RANDOM_MEAN[0] + u[:, 0] * (_RANDOM_MEAN[1] - _RANDOM_MEAN[0])
        std = _RANDOM_STD[0] + u[:, 1] * (_RANDOM_STD[1] - _RANDOM_STD[0])
    else:
        other = _T1_OTHER_BRAIN if contrast == "t1" else _T2_TISSUES[(3, 42)]  # cortex-like
        mean = np.full(MAX_LABEL + 1, other[0])
        std = np.full(MAX_LABEL + 1, other[1])
        for tissue_labels, (tissue_mean, tissue_std) in _PRESETS[contrast].items():
            mean[list(tissue_labels)], std[list(tissue_labels)] = tissue_mean, tissue_std
        mean *= 1.0 + _T1_JITTER * (2.0 * u[:, 0] - 1.0)
        lo, hi = _T1_NON_BRAIN_MEAN
        mean[NON_BRAIN:] = lo + u[NON_BRAIN:, 0] * (hi - lo)
        lo, hi = _T1_NON_BRAIN_STD
        std[NON_BRAIN:] = lo + u[NON_BRAIN:, 1] * (hi - lo)
    mean[0] = std[0] = 0.0
    return mean.astype(np.float32), std.astype(np.float32)


def _spline_basis(n: int, size: int) -> np.ndarray:
    """(size, n) matrix that cubic-spline upsamples n samples to size samples."""
    identity = np.eye(n, dtype=np.float32)
    return ndimage.zoom(identity, (size / n, 1), order=3, mode="reflect", grid_mode=True)


def _smooth_field(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Upsample a small 3-D grid to ``shape`` with separable cubic splines (cheap at any size)."""
    field = coarse.astype(np.float32)
    for size in shape:  # contract the leading axis; the new axis goes last, so 3 passes restore order
        field = np.tensordot(field, _spline_basis(field.shape[0], size), axes=(0, 1))
    return field


def _deform(array: np.ndarray, rng: np.random.Generator, sigma_vox: np.ndarray) -> np.ndarray:
    """Warp labels by a smooth random displacement (std ``sigma_vox`` per axis), nearest-neighbour."""
    shape = array.shape
    index = 0
    for axis, n in enumerate(shape):
        coarse = rng.standard_normal((_DEFORM_GRID,) * 3) * sigma_vox[axis]
        grid = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        source = np.clip(np.rint(grid + _smooth_field(coarse, shape)), 0, n - 1).astype(np.intp)
        index = index * n + source
    return array.ravel()[index]


def _lower_resolution(array: np.ndarray, spacing: np.ndarray, target_mm: float) -> np.ndarray:
    """Simulate acquisition at ``target_mm``: blur to that resolution, sample it, interpolate back."""
    factor = np.maximum(target_mm / spacing, 1.0)
    if np.all(factor == 1.0):
        return array
    sigma = np.sqrt(factor**2 - 1.0) / _FWHM_PER_SIGMA  # voxels: FWHM grows from 1 to `factor` voxels
    blurred = ndimage.gaussian_filter(array, sigma, mode="nearest")
    shape = np.array(array.shape)
    low_shape = np.ceil(shape / factor)
    low = ndimage.zoom(blurred, low_shape / shape, order=1, mode="nearest", grid_mode=True)
    return ndimage.zoom(low, shape / low_shape, order=1, mode="nearest", grid_mode=True)


def synthesize(
    labels: Volume,
    seed: int = 0,
    contrast: str = "t1",
    skull_strip: bool = True,
    blur_mm: float = 1.0,
    bias_strength: float = 0.2,
    noise: float = 3.0,
    deform_mm: float = 0.0,
    downsample_mm: float = 0.0,
) -> Volume:
    """Image (float32 Volume on the same grid and affine) from a label map.

    contrast: ``"t1"`` (realistic T1 tissue ordering, 0-150 scale, means jittered ±5 % per seed),
        ``"t2"`` (T2-like: fluid bright, white matter dark; same scale and jitter) or ``"random"`` (every label's mean uniform in [0, 255): contrast-agnostic training data).
    skull_strip: zero labels >= 100 first, so the head outside the brain is background. Before
        that, FreeSurfer's cortical and white-matter parcels (1000-4999: aparc+aseg, wmparc, the
        built-in atlas) become the cortex or white matter they parcellate (:func:`atlasreg.lut.aseg_tissue`).
    blur_mm: std (mm) of the Gaussian partial-volume blur.
    bias_strength: std of the log of the smooth multiplicative bias field (0 = none).
    noise: std of the additive Gaussian noise, in image intensity units.
    deform_mm: std (mm) of a smooth random displacement applied to the labels first (0 = none).
    downsample_mm: simulated acquisition resolution in mm (0, or finer than the grid = none).
    Background is 0 before noise; values are clipped to >= 0.
    """
    if not labels.is_labels:
        raise AtlasregError("synthesize needs a label map, got an image")
    if contrast not in CONTRASTS:
        raise AtlasregError(f"unknown contrast {contrast!r}; expected one of {', '.join(CONTRASTS)}")
    if seed < 0:
        raise AtlasregError(f"seed must be >= 0, got {seed}")
    amounts = {
        "blur_mm": blur_mm,
        "bias_strength": bias_strength,
        "noise": noise,
        "deform_mm": deform_mm,
        "downsample_mm": downsample_mm,
    }
    for name, value in amounts.items():
        if not (np.isfinite(value) and value >= 0):
            raise AtlasregError(f"{name} must be a finite number >= 0, got {value}")
    array = aseg_tissue(labels.array)
    array = _strip(array) if skull_strip else array
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL):
        raise AtlasregError(f"labels must lie in 0..{MAX_LABEL}")

    rng = np.random.default_rng(seed)
    spacing = labels.spacing
    mean, std = _label_parameters(rng, contrast)
    if deform_mm > 0:
        array = _deform(array, rng, deform_mm / spacing)

    out = rng.standard_normal(array.shape, dtype=np.float32)
    out *= std[array]
    out += mean[array]
    if blur_mm > 0:
        out = ndimage.gaussian_filter(out, blur_mm / spacing, mode="nearest", truncate=3.0)
    if bias_strength > 0:
        coarse = rng.standard_normal((_BIAS_GRID,) * 3) * bias_strength
        coarse -= coarse.mean()  # vary the intensity across the volume, not its overall scale
        out *= np.exp(_smooth_field(coarse, array.shape))
    if noise > 0:
        out += noise * rng.standard_normal(array.shape, dtype=np.float32)
    if downsample_mm > 0:
        out = _lower_resolution(out, spacing, downsample_mm)
    np.maximum(out, 0.0, out=out)
    return image(out, labels.affine)
