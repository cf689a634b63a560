"""The affine stage in torch: centre-of-mass start, then rigid, then 12-parameter affine, each by
Adam on a pyramid of grids (8, then 4 mm by default).

The map found is ``y = A (x - c_fixed) + c_moving + t`` (RAS mm, fixed world -> moving world):
starting from the centres of mass (``A = I, t = 0``) recovers large offsets between native-space
heads; the rigid stage (``A`` a rotation) comes first so shear and scale cannot absorb a rotation
(as antsRegistrationSyN does). Levels are voxel sizes in mm, so the cost does not grow with the
input's resolution; each step reads the similarity at ``samples`` fixed-grid voxels drawn afresh
(stochastic gradients, as ANTs samples a share of the voxels) by a generator of fixed seed, so a
step costs the same at 2 mm as at 8 mm and the result is the same bytes every run.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..logs import steps as step_bar
from ..volume import Volume, foreground, zscore
from .adam import Adam
from .defaults import AFFINE_ITERATIONS, AFFINE_LEVELS, AFFINE_METRICS, AFFINE_RIGID_ITERATIONS, AFFINE_SAMPLES
from .similarity import downsample, intensity_range, mse, mutual_information

#: Adam step sizes: rotation (radians), translation (mm), affine matrix entries
LR_ROTATION, LR_TRANSLATION, LR_MATRIX = 0.01, 0.5, 0.005


def _centre_of_mass(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """World (RAS mm) centre of the image's foreground ``mask`` (the head or, once skull-stripped, the brain)."""
    voxel = np.array(ndimage.center_of_mass(mask)) if mask.any() else (np.array(volume.shape) - 1) / 2.0
    return volume.affine[:3, :3] @ voxel + volume.affine[:3, 3]


def _level(volume: Volume, tensor: torch.Tensor, level_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """``tensor`` (the z-scored ``volume``) averaged onto a grid of about ``level_mm`` voxels, and that grid's affine."""
    n = np.array(volume.shape)
    shape = np.clip(np.round(n * volume.spacing / level_mm).astype(int), 2, n)
    ratio = n / shape  # area averaging: the grids share their outer voxel edges
    coarse_to_fine = np.diag([*ratio, 1.0])
    coarse_to_fine[:3, 3] = ratio / 2.0 - 0.5
    return downsample(tensor, shape), volume.affine @ coarse_to_fine


def _normalised(shape: Sequence[int]) -> np.ndarray:
    """4x4 map from voxel indices (i, j, k) to ``affine_grid``'s normalised (x, y, z) = (k, j, i) in [-1, 1]."""
    scale = np.diag([*(2.0 / (np.array(shape) - 1)), 1.0])
    scale[:3, 3] = -1.0
    return _REVERSE @ scale


_REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrix exp([angles]_x) (axis-angle; smooth at zero)."""
    zero = angles.new_zeros(())
    skew = torch.stack([
        torch.stack([zero, -angles[2], angles[1]]),
        torch.stack([angles[2], zero, -angles[0]]),
        torch.stack([-angles[1], angles[0], zero]),
    ])
    return torch.linalg.matrix_exp(skew)


def _voxel_points(shape: Sequence[int], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Homogeneous normalised coordinates ``(N, 4)`` of every voxel of a grid, in ``reshape(-1)`` order
    (``affine_grid``'s (x, y, z) = (k, j, i), ``align_corners=True``)."""
    axes = [torch.linspace(-1.0, 1.0, int(n), dtype=dtype, device=device) if n > 1 else torch.full((1,), -1.0, dtype=dtype, device=device) for n in shape]
    i, j, k = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([k, j, i, torch.ones_like(i)], dim=-1).reshape(-1, 4)


def affine_stage(
    moving: Volume,
    fixed: Volume,
    levels: Sequence[float] = AFFINE_LEVELS,
    rigid_iterations: Sequence[int] = AFFINE_RIGID_ITERATIONS,
    affine_iterations: Sequence[int] = AFFINE_ITERATIONS,
    metric: str = "mi",
    samples: int | None = AFFINE_SAMPLES,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """4x4 RAS matrix mapping fixed-world points into moving space (``Transform.from_matrix``'s convention).

    Args:
        levels: voxel size (mm) of each pyramid level, coarse to fine.
        rigid_iterations, affine_iterations: Adam steps per level of each stage (0 skips a level).
        metric: ``mi`` (mutual information: any contrasts, and intensities that differ by more than
            a linear map) or ``mse`` (z-scored images of the same contrast).
        samples: fixed-grid voxels the loss reads per step, drawn afresh each step (``None``: all of them).
        dtype: of the parameters and the maps built from them; ``None``: float64 on the CPU (cheap
            there), float32 on a GPU (where float64 is slow).
    """
    if not (len(levels) == len(rigid_iterations) == len(affine_iterations)):
        raise ValueError("affine_stage: levels, rigid_iterations and affine_iterations need the same length")
    if metric not in AFFINE_METRICS:
        raise ValueError(f"affine_stage: metric {metric!r}: choose one of {', '.join(AFFINE_METRICS)}")
    dtype = dtype or (torch.float64 if device == "cpu" else torch.float32)
    f64 = dict(device=device, dtype=dtype)
    fixed_mask, moving_mask = foreground(fixed.array), foreground(moving.array)  # once each: centre and z-score
    c_fixed = torch.tensor(_centre_of_mass(fixed, fixed_mask), **f64)
    c_moving = torch.tensor(_centre_of_mass(moving, moving_mask), **f64)
    fixed_t = torch.from_numpy(zscore(fixed, fixed_mask).array)[None, None].to(device)
    moving_t = torch.from_numpy(zscore(moving, moving_mask).array)[None, None].to(device)
    pyramid = []
    for mm in levels:
        fixed_l, fixed_affine = _level(fixed, fixed_t, mm)
        moving_l, moving_affine = _level(moving, moving_t, mm)
        # theta = after @ [A | b] @ before, in affine_grid's normalised coordinates of each grid
        after = torch.tensor(_normalised(moving_l.shape[2:]) @ np.linalg.inv(moving_affine), **f64)
        before = torch.tensor(fixed_affine @ np.linalg.inv(_normalised(fixed_l.shape[2:])), **f64)
        if metric == "mse":
            similarity = mse
        else:  # intensity ranges fixed per level, so the bins do not move under the optimiser
            similarity = partial(mutual_information, fixed_range=intensity_range(fixed_l), warped_range=intensity_range(moving_l))
        pyramid.append((_voxel_points(fixed_l.shape[2:], moving_l.dtype, device), fixed_l.reshape(-1), moving_l, after, before, similarity))

    angles = torch.zeros(3, **f64, requires_grad=True)
    translation = torch.zeros(3, **f64, requires_grad=True)
    matrix = torch.zeros(3, 3, **f64, requires_grad=True)  # affine stage: A = R(angles) + matrix

    def world_map(linear: torch.Tensor) -> torch.Tensor:
        """4x4 of y = A (x - c_fixed) + c_moving + t."""
        top = torch.cat([linear, (c_moving + translation - linear @ c_fixed)[:, None]], dim=1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], **f64)])

    generator = torch.Generator(device).manual_seed(0)

    def loss(level, linear: torch.Tensor) -> torch.Tensor:
        points, values, moving_l, after, before, similarity = level
        if samples is not None and samples < len(values):  # a fresh draw each step: no voxel left out for long
            index = torch.randint(len(values), (samples,), generator=generator, device=device)
            points, values = points[index], values[index]
        theta = (after @ world_map(linear) @ before)[:3].to(moving_l.dtype)
        grid = (points @ theta.T).view(1, -1, 1, 1, 3)
        warped = F.grid_sample(moving_l, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return similarity(values, warped.reshape(-1))

    def optimise(params, lrs, iterations, linear, stage: str) -> None:
        for mm, level, steps in zip(levels, pyramid, iterations):
            optimizer = Adam(list(zip(params, lrs)))
            for _ in step_bar(steps, f"{stage} {mm:g} mm"):
                optimizer.zero_grad()
                loss(level, linear()).backward()
                optimizer.step()
                optimizer.decay(0.1 ** (1.0 / max(steps, 1)))  # tenfold over each level: large moves first, then settle without jitter

    optimise((angles, translation), (LR_ROTATION, LR_TRANSLATION), rigid_iterations, lambda: _rotation(angles), "rigid")
    with torch.no_grad():
        rotation = _rotation(angles)
    optimise((matrix, translation), (LR_MATRIX, LR_TRANSLATION), affine_iterations, lambda: rotation + matrix, "affine")

    with torch.no_grad():
        return world_map(rotation + matrix).cpu().numpy()
