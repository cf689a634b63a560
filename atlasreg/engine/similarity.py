"""Image similarity losses (lower is better) and the Gaussian smoothing the optimisers share.

Shapes: images ``(B, 1, X, Y, Z)``; fields ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SIMILARITIES = ("lncc", "mse", "mi")


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window``^3 cube around each voxel (zero padding): per axis, a difference of
    cumulative sums (cheaper than pooling or convolution, forward and backward)."""
    half = window // 2
    for dim in (2, 3, 4):
        n = x.shape[dim]
        sums = F.pad(x, _pad_for(dim - 2, half + 1, half)).cumsum(dim)
        x = (sums.narrow(dim, window, n) - sums.narrow(dim, 0, n)) / window
    return x


def lncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 5, eps: float = 1e-5) -> torch.Tensor:
    """Minus the mean squared local normalised cross-correlation over ``window``^3 neighbourhoods, in [-1, 0]."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"lncc: window must be a positive odd number, got {window}")
    means = _box_mean(torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1), window)
    m_f, m_w, m_ff, m_ww, m_fw = means.unbind(1)
    cross = m_fw - m_f * m_w
    var_f = (m_ff - m_f * m_f).clamp_min(0.0)
    var_w = (m_ww - m_w * m_w).clamp_min(0.0)
    return -(cross * cross / (var_f * var_w + eps)).mean()


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared difference (for z-scored images of the same contrast)."""
    return ((fixed - warped) ** 2).mean()


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Minus the mutual information of the two intensity distributions (Parzen windows, Gaussian kernel).

    Intensities are clamped to the fixed image's 0.5-99.5 % range (per image) and softly assigned to
    ``bins`` bins; the joint histogram is the product of the two soft assignments. Suits pairs of
    different contrasts (a T1 atlas and a T2 target), where LNCC and MSE do not.
    """

    def soft_bins(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1)
        lo, hi = torch.quantile(flat[:: max(1, flat.numel() // 100_000)].detach(), torch.tensor([0.005, 0.995], device=x.device, dtype=x.dtype))
        scaled = (flat.clamp(lo, hi) - lo) / (hi - lo + 1e-8) * (bins - 1)
        centres = torch.arange(bins, device=x.device, dtype=x.dtype)
        weights = torch.exp(-0.5 * (scaled[:, None] - centres) ** 2)
        return weights / weights.sum(1, keepdim=True)

    wf, ww = soft_bins(fixed), soft_bins(warped)
    joint = wf.T @ ww / wf.shape[0]
    pf, pw = joint.sum(1), joint.sum(0)
    return -(joint * (torch.log(joint + 1e-10) - torch.log(pf[:, None] * pw[None, :] + 1e-10))).sum()


def similarity(name: str, fixed: torch.Tensor, warped: torch.Tensor, window: int) -> torch.Tensor:
    """The loss called ``name`` (one of ``SIMILARITIES``); ``window`` is LNCC's."""
    if name == "lncc":
        return lncc(fixed, warped, window)
    if name == "mse":
        return mse(fixed, warped)
    if name == "mi":
        return mutual_information(fixed, warped)
    raise ValueError(f"similarity {name!r}: choose one of {', '.join(SIMILARITIES)}")


def gaussian_blur(x: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Each channel smoothed by a separable Gaussian of ``sigma`` voxels per axis (0: that axis untouched)."""
    sigmas = [float(sigma)] * 3 if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    channels = x.shape[1]
    for dim, s in enumerate(sigmas):
        if s <= 0:
            continue
        radius = max(1, math.ceil(3.0 * s))
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps / s) ** 2)
        shape, padding = [1, 1, 1], [0, 0, 0]
        shape[dim], padding[dim] = 2 * radius + 1, radius
        weight = (kernel / kernel.sum()).view(1, 1, *shape).expand(channels, 1, *shape)
        x = F.conv3d(F.pad(x, _pad_for(dim, radius), mode="replicate"), weight, groups=channels)
    return x


def _pad_for(dim: int, before: int, after: int | None = None) -> tuple[int, ...]:
    """``F.pad`` widths (last axis first) padding spatial axis ``dim`` (0-2) by ``before`` / ``after`` voxels."""
    widths = [0] * 6
    widths[2 * (2 - dim)] = before
    widths[2 * (2 - dim) + 1] = before if after is None else after
    return tuple(widths)


def downsample(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``image`` averaged onto a coarser grid of ``shape`` voxels covering the same extent (outer voxel
    edges shared, as ``flow.resize``'s default): each new voxel is the mean of the old ones it covers."""
    shape = tuple(int(n) for n in shape)
    return image if tuple(image.shape[2:]) == shape else F.interpolate(image, size=shape, mode="area")
