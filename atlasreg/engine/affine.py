"""The affine stage in torch: centre-of-mass start, then rigid, then 12-parameter affine, each by
Adam on a pyramid of grids (8, 4, then 2 mm by default).

The map found is ``y = A (x - c_fixed) + c_moving + t`` (RAS mm, fixed world -> moving world):
starting from the centres of mass (``A = I, t = 0``) recovers large offsets between native-space
heads; the rigid stage (``A`` a rotation) comes first so shear and scale cannot absorb a rotation
(as antsRegistrationSyN does). Levels are voxel sizes in mm, so the cost does not grow with the
input's resolution.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..volume import Volume, foreground, zscore
from .similarity import downsample, similarity

#: Adam step sizes: rotation (radians), translation (mm), affine matrix entries
LR_ROTATION, LR_TRANSLATION, LR_MATRIX = 0.01, 0.5, 0.005


def _centre_of_mass(volume: Volume) -> np.ndarray:
    """World (RAS mm) centre of the image's foreground (the head or, once skull-stripped, the brain)."""
    mask = foreground(volume.array)
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


def affine_stage(
    moving: Volume,
    fixed: Volume,
    levels: Sequence[float] = (8.0, 4.0, 2.0),
    rigid_iterations: Sequence[int] = (100, 50, 25),
    affine_iterations: Sequence[int] = (100, 50, 25),
    metric: str = "mse",
    window: int = 5,
    device: str = "cpu",
) -> np.ndarray:
    """4x4 RAS matrix mapping fixed-world points into moving space (``Transform.from_matrix``'s convention).

    Args:
        levels: voxel size (mm) of each pyramid level, coarse to fine.
        rigid_iterations, affine_iterations: Adam steps per level of each stage (0 skips a level).
        metric: ``mse`` (on z-scored images) for same-contrast pairs, ``mi`` across contrasts; ``lncc``
            (window ``window`` voxels) is offered but captures rotations poorly at coarse levels.
    """
    if not (len(levels) == len(rigid_iterations) == len(affine_iterations)):
        raise ValueError("affine_stage: levels, rigid_iterations and affine_iterations need the same length")
    dtype = torch.float64 if device == "cpu" else torch.float32
    f64 = dict(device=device, dtype=dtype)
    c_fixed = torch.tensor(_centre_of_mass(fixed), **f64)
    c_moving = torch.tensor(_centre_of_mass(moving), **f64)
    fixed_t = torch.from_numpy(zscore(fixed).array)[None, None].to(device)
    moving_t = torch.from_numpy(zscore(moving).array)[None, None].to(device)
    pyramid = []
    for mm in levels:
        fixed_l, fixed_affine = _level(fixed, fixed_t, mm)
        moving_l, moving_affine = _level(moving, moving_t, mm)
        # theta = after @ [A | b] @ before, in affine_grid's normalised coordinates of each grid
        after = torch.tensor(_normalised(moving_l.shape[2:]) @ np.linalg.inv(moving_affine), **f64)
        before = torch.tensor(fixed_affine @ np.linalg.inv(_normalised(fixed_l.shape[2:])), **f64)
        pyramid.append((fixed_l, moving_l, after, before))

    angles = torch.zeros(3, **f64, requires_grad=True)
    translation = torch.zeros(3, **f64, requires_grad=True)
    matrix = torch.zeros(3, 3, **f64, requires_grad=True)  # affine stage: A = R(angles) + matrix

    def world_map(linear: torch.Tensor) -> torch.Tensor:
        """4x4 of y = A (x - c_fixed) + c_moving + t."""
        top = torch.cat([linear, (c_moving + translation - linear @ c_fixed)[:, None]], dim=1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], **f64)])

    def loss(level, linear: torch.Tensor) -> torch.Tensor:
        fixed_l, moving_l, after, before = level
        theta = (after @ world_map(linear) @ before)[None, :3].to(moving_l.dtype)
        grid = F.affine_grid(theta, list(fixed_l.shape), align_corners=True)
        warped = F.grid_sample(moving_l, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return similarity(metric, fixed_l, warped, window)

    for params, lrs, iterations, linear in (
        ((angles, translation), (LR_ROTATION, LR_TRANSLATION), rigid_iterations, lambda: _rotation(angles)),
        ((matrix, translation), (LR_MATRIX, LR_TRANSLATION), affine_iterations, lambda: _rotation(angles).detach() + matrix),
    ):
        for level, steps in zip(pyramid, iterations):
            optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
            # step sizes decay tenfold over each level: large moves first, then settle without jitter
            schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.1 ** (1.0 / max(steps, 1)))
            for _ in range(steps):
                optimizer.zero_grad()
                loss(level, linear()).backward()
                optimizer.step()
                schedule.step()

    with torch.no_grad():
        return world_map(_rotation(angles) + matrix).cpu().numpy()
