"""Diffeomorphic registration by optimising a stationary velocity field with Adam on a pyramid.

At each level the loss is ``LNCC(fixed, moving o exp(v)) + weight * |grad v|^2``; the gradient is
smoothed with a Gaussian before each Adam step (as ANTs and FireANTs smooth their updates), and
``exp`` is scaling and squaring (``flow.integrate``), so the map stays diffeomorphic. A coarse
level's velocity, resampled, starts the next. Everything stays on the input's device.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..flow import integrate, resize, warp
from .defaults import SVF_ITERATIONS, SVF_LEVELS, SVF_LR, SVF_SMOOTHING, SVF_WEIGHT, SVF_WINDOW
from .similarity import downsample, gaussian_blur, lncc

INTEGRATION_STEPS = 4  # squarings: 6 measured no better on validation pairs (0.721 vs 0.721 Dice), 20 % slower


def diffusion(velocity: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of the field along each axis, summed over the axes."""
    return sum(((velocity.narrow(d, 1, n - 1) - velocity.narrow(d, 0, n - 1)) ** 2).mean()
               for d, n in zip((2, 3, 4), velocity.shape[2:]) if n > 1)


def level_shape(shape: Sequence[int], factor: int) -> tuple[int, int, int]:
    """Grid ``factor`` times coarser over the same extent (``ceil(n / factor)`` voxels, at least 2)."""
    return tuple(max(-(-int(n) // factor), 2) for n in shape)  # type: ignore[return-value]


def optimize_velocity(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    velocity: torch.Tensor | None = None,
    levels: Sequence[int] = SVF_LEVELS,
    iterations: Sequence[int] = SVF_ITERATIONS,
    window: int = SVF_WINDOW,
    weight: float = SVF_WEIGHT,
    smoothing: float = SVF_SMOOTHING,
    lr: float = SVF_LR,
) -> torch.Tensor:
    """Velocity ``(1, 3, X', Y', Z')`` of ``exp(v)`` pulling ``moving`` onto ``fixed``, in voxels of its
    own grid, half as fine as the input's (the field is smooth; its coarse grid makes the squaring
    steps and the gradient smoothing 8x cheaper). ``flow.resize(flow.integrate(v), shape)`` gives
    the displacement on the input grid.

    Args:
        moving, fixed: ``(1, 1, X, Y, Z)`` images on one grid, e.g. z-scored after the affine stage.
        velocity: a start (e.g. a network's prediction, any grid over the same extent); zero when ``None``.
        levels: shrink factor of each level, coarse to fine (1: the input grid).
        iterations: Adam steps per level.
        window: LNCC window (voxels of each level).
        weight: of the diffusion regulariser on the velocity.
        smoothing: sigma (voxels) of the Gaussian applied to the gradient before each step (0: none).
        lr: Adam step size, in voxels of the velocity grid.
    """
    if len(levels) != len(iterations):
        raise ValueError("optimize_velocity: levels and iterations need the same length")
    shape = tuple(fixed.shape[2:])
    current = velocity.detach() if velocity is not None else fixed.new_zeros(1, 3, *level_shape(shape, max(levels[0], 2)))
    for factor, steps in zip(levels, iterations):
        grid = level_shape(shape, factor)
        fixed_l, moving_l = downsample(fixed, grid), downsample(moving, grid)
        v = resize(current, level_shape(shape, max(factor, 2))).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            warped = warp(moving_l, resize(integrate(v, INTEGRATION_STEPS), grid))
            (lncc(fixed_l, warped, window) + weight * diffusion(v)).backward()
            if smoothing > 0:
                v.grad = gaussian_blur(v.grad, smoothing)
            optimizer.step()
        current = v.detach()
    return current


def displacement(velocity: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flow ``(1, 3, *shape)`` in voxels of a grid of ``shape`` over the same extent: ``exp(velocity)`` resized."""
    return resize(integrate(velocity, INTEGRATION_STEPS), shape)
