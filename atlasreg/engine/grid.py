"""The working grid and the affine pre-alignment that the learned backends and ``svf`` share.

Both see affinely pre-aligned pairs on a working grid, axis-aligned in RAS: the learned backends
one of the fixed shape their networks were trained on, centred on the fixed image's brain
(:func:`working_grid`); ``svf`` one that covers the fixed image's head (:func:`covering_grid`).
The engine's affine stage maps fixed
to moving world first; a field u on the working grid is then composed with it into one Transform
on the fixed image's own grid: T(x) = A · (x + u(x)). Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import AtlasregError
from ..transform import Transform, Velocity
from ..volume import Volume, zscore


def working_grid(fixed: Volume, spacing: float, shape: tuple[int, int, int]) -> Volume:
    """An axis-aligned RAS grid (empty Volume) of ``shape`` voxels at ``spacing`` mm centred on the
    centre of mass of ``fixed``'s non-zero voxels (its brain once skull-stripped): the learned
    backends' grid, of the shape their networks were trained on."""
    mask = fixed.array > 0
    centre_voxel = np.array(ndimage.center_of_mass(mask)) if mask.any() else (np.array(fixed.shape) - 1) / 2.0
    return _grid(fixed.affine[:3, :3] @ centre_voxel + fixed.affine[:3, 3], spacing, shape)


def covering_grid(fixed: Volume, spacing: float, margin: int = 4) -> Volume:
    """An axis-aligned RAS grid (empty Volume) at ``spacing`` mm holding the box of ``fixed``'s head
    (:func:`head_mask`) plus ``margin`` voxels each side, centred on that box: ``svf``'s grid.

    Not the whole image: where a field of view cuts off a noisy or blurred background, the image's
    own edge would be a feature LNCC tries to match (validation subjects, mean aseg Dice of ``svf``:
    0.733 -> 0.747 on the synthesizer's 02-07, 0.733 -> 0.737 on the second renderer's 05-07; on
    subject 05 about half the voxels of a grid centred on the non-zero voxels' centre of mass)."""
    mask = head_mask(fixed.array)
    voxels = np.argwhere(mask) if mask.any() else np.array([[0, 0, 0], np.array(fixed.shape) - 1])
    corners = np.array(np.meshgrid(*[[lo, hi] for lo, hi in zip(voxels.min(0), voxels.max(0))], indexing="ij")).reshape(3, -1)
    world = fixed.affine[:3, :3] @ corners + fixed.affine[:3, 3:4]
    low, high = world.min(1), world.max(1)
    shape = np.ceil((high - low) / spacing).astype(int) + 1 + 2 * margin
    return _grid((low + high) / 2.0, spacing, tuple(int(n) for n in shape))


def _grid(centre: np.ndarray, spacing: float, shape: tuple[int, int, int]) -> Volume:
    """An empty axis-aligned RAS Volume of ``shape`` voxels at ``spacing`` mm centred on world point ``centre``."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2.0
    return Volume(np.zeros(shape, np.float32), affine, is_labels=False)


@dataclass(frozen=True)
class AlignedPair:
    """A moving/fixed pair on one working grid, intensities z-scored; ``matrix`` = the affine stage."""

    moving: np.ndarray
    fixed: np.ndarray
    grid: Volume
    matrix: np.ndarray
    moving_labels: np.ndarray | None = None


def align_pair(
    moving: Volume,
    fixed: Volume,
    grid: Volume,
    moving_labels: Volume | None = None,
    matrix: np.ndarray | None = None,
    device: str = "cpu",
) -> AlignedPair:
    """The core's affine stage (unless ``matrix`` is given; run on ``device``), then both images
    resampled onto ``grid`` (:func:`working_grid` or :func:`covering_grid`)."""
    if matrix is None:
        from .affine import affine_stage

        matrix = affine_stage(moving, fixed, device=device)
    on_grid = Transform(grid.shape, grid.affine, None, matrix, device=warping_device(device))
    fixed_w = Transform(grid.shape, grid.affine, device=warping_device(device)).warp(fixed)
    moving_w = on_grid.warp(moving)
    labels_w = on_grid.warp_labels(moving_labels).array if moving_labels is not None else None
    return AlignedPair(zscore(moving_w).array, zscore(fixed_w).array, grid, matrix, labels_w)


HEAD_LEVEL = 0.12  # of the 1-99.9 % intensity span: above the background's noise, below any tissue of T1, T2, PD or FLAIR


def head_mask(array: np.ndarray) -> np.ndarray:
    """The imaged head or brain: the largest connected region of voxels above a low threshold,
    enclosed holes filled. Not Otsu's threshold, which on a T2-like image can fall above its dark
    white matter; not every voxel above it, since a noisy background has specks there (second
    renderer, subject 05: 127 regions, whose box was the whole image; the largest holds 99.9 %)."""
    low, high = np.percentile(array, [1.0, 99.9])
    regions, count = ndimage.label(array > low + HEAD_LEVEL * (high - low))
    if count == 0:
        return np.zeros(array.shape, bool)
    largest = np.bincount(regions.ravel())[1:].argmax() + 1
    return ndimage.binary_fill_holes(regions == largest)


def matched_background(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """``fixed`` (on ``moving``'s grid, roughly aligned), its background made as bright as its brightest
    tissue where its intensities fall as ``moving``'s rise (a T2-like or inverted target for a T1
    atlas); unchanged otherwise.

    Local correlation (LNCC) is blind to the sign of a contrast, but not to a relation that turns
    back: a T1 atlas is dark outside the brain, dark in CSF, bright in white matter; a skull-stripped
    T2 is dark outside, bright in CSF, dark in white matter. Every window on the brain's edge then
    pulls the wrong way (validation subjects 05-07: T2-like targets 0.075 and inverted ones 0.037 mean
    aseg Dice below T1 ones). A bright background
    makes the relation fall throughout, as the inverted image of the atlas would be. The head's
    outermost voxel goes with the background (validation subjects 05-07, second renderer: 0 / 1 / 2
    voxels: inverted targets 0.708 / 0.719 / 0.710 mean aseg Dice, T2-like 0.698 / 0.710 / 0.705).
    """
    fixed_head, moving_head = head_mask(fixed), head_mask(moving)
    both = fixed_head & moving_head
    if both.sum() < 2 or np.corrcoef(moving[both], fixed[both])[0, 1] >= 0:
        return fixed
    inner = ndimage.binary_erosion(fixed_head)  # the head's outer voxels too: partly background, they would be a dark rim
    return np.where(inner, fixed, np.percentile(fixed[fixed_head], 99.5)).astype(fixed.dtype)


def matched_background_on(moving: Volume, fixed: Volume, matrix: np.ndarray) -> Volume:
    """:func:`matched_background` on ``fixed``'s own grid, ``moving`` brought there by the affine
    stage's ``matrix``: for a registration outside the engine whose local correlation meets a
    reversed contrast (ANTs' CC). ``fixed`` itself when the contrasts run the same way."""
    moving_there = Transform.from_matrix(fixed, matrix).warp(moving).array
    matched = matched_background(moving_there, fixed.array)
    return fixed if matched is fixed.array else Volume(matched, fixed.affine, is_labels=False)


def similarity_target(moving: np.ndarray, fixed: np.ndarray, similarity: str) -> np.ndarray:
    """The fixed image as the velocity optimiser's ``similarity`` should see it: with a
    :func:`matched_background` for ``lncc``, as it is for ``mind`` (which compares local structure,
    not intensities)."""
    return matched_background(moving, fixed) if similarity == "lncc" else fixed


def warping_device(device: str) -> str | None:
    """``Transform.device`` for work on ``device``: NumPy on the CPU (None), torch on a GPU."""
    return None if device == "cpu" else device


def transform_from_flow(flow_voxels, pair: AlignedPair, fixed: Volume, velocity: Velocity | None = None) -> Transform:
    """The network's flow (3, X, Y, Z, working-grid voxels; NumPy or a torch tensor on any device)
    composed with the affine stage, on ``fixed``'s grid; ``velocity``: the one the flow is the
    exponential of, kept for an exact inverse.

    The field is resampled onto ``fixed``'s grid with torch (linear, border values beyond the
    working grid), on the flow's own device: on a GPU this step costs milliseconds, not seconds,
    and the Transform warps labels there too.
    """
    import torch

    from ..flow import identity, sample_at

    flow = torch.as_tensor(flow_voxels).float()
    spacing = float(pair.grid.affine[0, 0])  # axis-aligned RAS grid: voxels -> mm
    to_working = torch.as_tensor(np.linalg.inv(pair.grid.affine) @ fixed.affine, dtype=torch.float32, device=flow.device)
    points = identity(fixed.shape, device=flow.device).permute(0, 2, 3, 4, 1) @ to_working[:3, :3].T + to_working[:3, 3]
    field = sample_at(flow[None] * spacing, points)[0]
    return Transform(fixed.shape, fixed.affine, field.permute(1, 2, 3, 0).cpu().numpy(), pair.matrix, velocity,
                     device=warping_device(flow.device.type))


def pick_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AtlasregError("device cuda requested but no CUDA GPU is visible")
    if name not in ("cpu", "cuda"):
        raise AtlasregError(f"device {name!r}: choose auto, cpu or cuda")
    return name
