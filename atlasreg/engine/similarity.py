"""Image similarity losses (lower is better) and the pyramid's downsampling.

Shapes: images ``(B, 1, X, Y, Z)``; fields ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


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
    return lncc_against(lncc_reference(fixed, window), warped, eps)


def lncc_reference(fixed: torch.Tensor, window: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """What :func:`lncc` needs of the fixed image: the image and the window means of it and of its
    square (an optimiser computes them once per pyramid level, where the fixed image does not move)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"lncc: window must be a positive odd number, got {window}")
    # the fixed image's window means apart: when only ``warped`` needs a gradient (registration,
    # training), the backward pass runs through 3 channels of box sums instead of 5
    m_f, m_ff = _box_mean(torch.cat([fixed, fixed * fixed], dim=1), window).unbind(1)
    return fixed, m_f, m_ff, window


def lncc_against(reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int], warped: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """:func:`lncc` of ``warped`` against a fixed image's :func:`lncc_reference`."""
    fixed, m_f, m_ff, window = reference
    m_w, m_ww, m_fw = _box_mean(torch.cat([warped, warped * warped, fixed * warped], dim=1), window).unbind(1)
    cross = m_fw - m_f * m_w
    var_f = (m_ff - m_f * m_f).clamp_min(0.0)
    var_w = (m_ww - m_w * m_w).clamp_min(0.0)
    return -(cross * cross / (var_f * var_w + eps)).mean()


#: the six neighbours (voxel offsets along each axis, both ways) whose patch distances MIND-SSC compares
_SIX = [(axis, sign) for axis in range(3) for sign in (1, -1)]
#: the 12 pairs of them sqrt(2) apart (neighbours on different axes): the self-similarity context
_SSC_PAIRS = [(a, b) for i, a in enumerate(_SIX) for b in _SIX[i + 1:] if a[0] != b[0]]


def _shifted(image: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """``image`` read at ``p + offset`` along spatial ``axis`` (edge values past the border)."""
    dim, n = axis + 2, image.shape[axis + 2]
    index = (torch.arange(n, device=image.device) + offset).clamp(0, n - 1)
    return image.index_select(dim, index)


def mind_ssc(image: torch.Tensor, dilation: int = 2, window: int = 3) -> torch.Tensor:
    """MIND-SSC descriptors (Heinrich et al. 2013) ``(B, 12, X, Y, Z)`` of an image ``(B, 1, X, Y, Z)``.

    Each channel is exp(-D / V): D the mean squared difference over a ``window``^3 patch between
    the image shifted to two of the six neighbours ``dilation`` voxels away (the 12 pairs
    sqrt(2) apart), V the mean of the 12 distances at that voxel (the local noise level). The
    descriptor describes local structure, not intensity, so it matches across contrasts: compare
    two images' descriptors by their squared difference (:func:`descriptor_distance`).
    """
    shifted = {(axis, sign): _shifted(image, axis, sign * dilation) for axis, sign in _SIX}
    distances = _box_mean(torch.cat([(shifted[a] - shifted[b]) ** 2 for a, b in _SSC_PAIRS], dim=1), window)
    variance = distances.mean(dim=1, keepdim=True)
    overall = variance.mean()
    variance = variance.clamp(min=1e-3 * overall + 1e-12, max=1e3 * overall + 1e-12)
    descriptor = torch.exp(-distances / variance)
    return descriptor / descriptor.amax(dim=1, keepdim=True)


def descriptor_distance(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two descriptor images ``(B, C, X, Y, Z)`` (e.g. :func:`mind_ssc`)."""
    return ((fixed - warped) ** 2).mean()


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared difference (for z-scored images of the same contrast)."""
    return ((fixed - warped) ** 2).mean()


def _parzen(x: torch.Tensor, lo: float, hi: float, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic B-spline Parzen window of each value over ``bins`` bins spanning [lo, hi] (Mattes et al.):
    the first of the 4 bins it touches ``(N,)``, and its weights there ``(N, 4)``, differentiable in ``x``."""
    position = (x.clamp(lo, hi) - lo) / (hi - lo) * (bins - 3) + 1.0  # in [1, bins - 2]: 4 bins fit
    start = position.detach().floor().clamp(max=bins - 3)
    t = position - start
    weights = torch.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], dim=1) / 6.0
    return start.long() - 1, weights


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, fixed_range: tuple[float, float],
                       warped_range: tuple[float, float], bins: int = 32) -> torch.Tensor:
    """Minus the mutual information of two sets of intensities (flattened), by a joint histogram with
    cubic B-spline Parzen windows: each value touches 4 bins, so the cost is linear in the voxels.

    Values are clamped to their range (e.g. the 0.5-99.5 % quantiles of each image, fixed for the
    whole optimisation). Suits pairs of different contrasts (a T1 atlas and a T2 target), and pairs
    whose intensities differ by more than a linear map.
    """
    f_start, f_weights = _parzen(fixed.reshape(-1), *fixed_range, bins)
    w_start, w_weights = _parzen(warped.reshape(-1), *warped_range, bins)
    offsets = torch.arange(4, device=fixed.device)
    cells = ((f_start[:, None] + offsets)[:, :, None] * bins + (w_start[:, None] + offsets)[:, None, :]).reshape(-1)
    mass = (f_weights[:, :, None] * w_weights[:, None, :]).reshape(-1)
    joint = torch.zeros(bins * bins, device=fixed.device, dtype=mass.dtype).index_add(0, cells, mass).view(bins, bins)
    joint = joint / joint.sum()
    pf, pw = joint.sum(1), joint.sum(0)
    return -(joint * (torch.log(joint + 1e-10) - torch.log(pf[:, None] * pw[None, :] + 1e-10))).sum()


def intensity_range(image: torch.Tensor, low: float = 0.005, high: float = 0.995) -> tuple[float, float]:
    """The ``low`` and ``high`` quantiles of an image's values (read on at most ~100k of them), for ``mutual_information``."""
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 100_000)].float()
    lo, hi = torch.quantile(sample, torch.tensor([low, high], device=image.device)).tolist()
    return lo, (hi if hi > lo else lo + 1.0)


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
