"""Loss terms of the VoxelMorph baseline, kept separate (the backend weights them): image similarity
(``mse`` or ``local_ncc``, the engine's LNCC) + lambda * ``grad_smoothness`` of the flow (Balakrishnan et al., 2019).

Shapes: images ``(B, C, X, Y, Z)``, flows ``(B, 3, X, Y, Z)`` in voxels. Lower is better for all.
"""

from __future__ import annotations

import torch

from atlasreg.engine.similarity import lncc as local_ncc

__all__ = ["mse", "local_ncc", "grad_smoothness"]


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference over voxels, channels and batch."""
    if fixed.shape != warped.shape:
        raise ValueError(f"mse: fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} differ")
    return ((fixed - warped) ** 2).mean()


def grad_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: the mean squared forward difference of the flow, averaged over the three
    axes: (mean(d_x u^2) + mean(d_y u^2) + mean(d_z u^2)) / 3 (each mean over components, voxel
    pairs and batch). An axis of one voxel contributes 0."""
    terms = []
    for dim in (2, 3, 4):
        n = flow.shape[dim]
        if n < 2:
            terms.append(flow.new_zeros(()))
            continue
        diff = flow.narrow(dim, 1, n - 1) - flow.narrow(dim, 0, n - 1)
        terms.append((diff**2).mean())
    return sum(terms) / 3.0
