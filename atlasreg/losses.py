"""Image similarity shared by the learned backends and instance optimisation (torch).

Shapes: images ``(B, C, X, Y, Z)``. Lower is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_ncc"]


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a window^3 cube centred on each voxel (zero padding), as three separable 1-D sums."""
    channels = x.shape[1]
    pad = window // 2
    kernel = torch.ones(channels, 1, window, device=x.device, dtype=x.dtype)
    for dim in range(3):
        shape = [1, 1, 1]
        shape[dim] = window
        padding = [0, 0, 0]
        padding[dim] = pad
        x = F.conv3d(x, kernel.view(channels, 1, *shape), padding=tuple(padding), groups=channels)
    return x


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Minus the mean local (squared) normalised cross-correlation over ``window``^3 neighbourhoods.

    At each voxel, with means over the window (zero padding at the borders, n = window^3):
    cc = cov(I, J)^2 / (var(I) var(J) + eps) where cov = mean(IJ) - mean(I) mean(J) and
    var = mean(I^2) - mean(I)^2 (VoxelMorph's NCC, written with means instead of sums). Returns
    -mean(cc) in [-1, 0]: -1 is a perfect local linear match. Invariant to a local gain and offset,
    so it needs no noise model of the intensities (unlike MSE) and carries over between synthetic
    and real contrasts.

    Means, not sums: ``eps`` is then in units of intensity^4 and dominates where a window is
    flat (a constant background, e.g. 0 after z-scoring), where the sums' rounding noise
    (float32, values ~ n * intensity^2) would otherwise give cc >> 1 -- a spurious optimum that
    a network learns to exploit by folding its field.
    """
    if fixed.shape != warped.shape:
        raise ValueError(f"local_ncc: fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} differ")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"local_ncc: window must be a positive odd number, got {window}")
    channels = fixed.shape[1]
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    means = _box_sum(stacked, window) / float(window**3)
    m_i, m_j, m_ii, m_jj, m_ij = torch.split(means, channels, dim=1)
    cross = m_ij - m_i * m_j
    var_i = (m_ii - m_i * m_i).clamp_min(0.0)  # >= 0 up to rounding
    var_j = (m_jj - m_j * m_j).clamp_min(0.0)
    cc = cross * cross / (var_i * var_j + eps)
    return -cc.mean()
