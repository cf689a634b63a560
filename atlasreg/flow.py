"""Dense displacement fields in torch: warping, scaling-and-squaring integration, Jacobians, resizing.

The functional core shared by the learned backends (networks, losses, training loop). Pure torch,
no ``Volume`` types; everything runs on the device (and in the dtype) of its input.

Conventions
-----------
* Images are tensors ``(B, C, X, Y, Z)`` whose spatial axes are the array axes of the volume.
* Flows (displacements) and stationary velocities are ``(B, 3, X, Y, Z)`` in **voxel units** of
  that grid: component ``c`` is the displacement along spatial axis ``c`` (so component 0 goes
  along array axis 2 of the tensor, i.e. ``X``).
* Backward mapping: ``warped(p) = src(p + flow(p))``; the map of a flow is ``phi(p) = p + flow(p)``.
* Voxel ``i`` of an axis of ``n`` voxels sits at coordinate ``i`` (voxel centres ``0 .. n-1``);
  this is ``grid_sample``'s ``align_corners=True`` convention.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "identity",
    "warp",
    "sample_at",
    "gaussian_blur",
    "compose",
    "integrate",
    "jacobian_determinant",
    "resize",
]

WARP_MODES = ("bilinear", "nearest")
PADDINGS = ("border", "zeros", "reflection")


def identity(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid, ``(1, 3, X, Y, Z)``: component ``c`` holds the index along axis ``c``."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"identity: a 3-D shape is needed, got {shape}")
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]


def _check_flow(flow: torch.Tensor, name: str = "flow") -> None:
    if flow.dim() != 5 or flow.shape[1] != 3:
        raise ValueError(f"{name}: expected (B, 3, X, Y, Z), got {tuple(flow.shape)}")


@functools.lru_cache(maxsize=4)  # the grids of one registration: its levels and the working grid
def _grid_constants(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`identity` of ``shape`` and the per-axis scale to ``grid_sample``'s [-1, 1], made once per
    grid (an optimiser samples the same few grids hundreds of times); never written to."""
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, whatever mode the first caller was in
        # an axis of one voxel: any normalised coordinate maps back to index 0, avoid 0/0
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=device, dtype=dtype).view(1, 3, 1, 1, 1)
        return identity(shape, device=device, dtype=dtype), scale


def _sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid ``(B, X, Y, Z, 3)`` for the points ``p + flow(p)``.

    ``grid_sample`` on a 5-D input ``(B, C, D, H, W)`` reads ``grid[..., 0]`` as the W (last)
    coordinate, ``grid[..., 1]`` as H and ``grid[..., 2]`` as D, each normalised to [-1, 1]
    (``align_corners=True``: -1 and 1 are the centres of the first and last voxels). Our axes
    (X, Y, Z) are (D, H, W), so the components are reversed after normalising.
    """
    voxels, scale = _grid_constants(tuple(flow.shape[2:]), flow.device, flow.dtype)
    normalised = (voxels + flow) * scale - 1.0
    return normalised.permute(0, 2, 3, 4, 1).flip(-1)


def warp(src: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """``src`` resampled at ``p + flow(p)``: ``warped(p) = src(p + flow(p))``.

    Args:
        src: ``(B, C, X, Y, Z)`` (float; an integer tensor, e.g. labels, needs ``mode="nearest"``
            and comes back in its own dtype). A batch of 1 is broadcast against ``flow``'s batch
            and vice versa.
        flow: ``(B, 3, X, Y, Z)`` in voxel units, same spatial shape as ``src``.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding: value for points outside ``src``: ``"border"`` (nearest edge voxel),
            ``"zeros"`` or ``"reflection"``.
    """
    if mode not in WARP_MODES:
        raise ValueError(f"warp: mode {mode!r}: choose one of {', '.join(WARP_MODES)}")
    if padding not in PADDINGS:
        raise ValueError(f"warp: padding {padding!r}: choose one of {', '.join(PADDINGS)}")
    _check_flow(flow)
    if src.dim() != 5:
        raise ValueError(f"warp: src must be (B, C, X, Y, Z), got {tuple(src.shape)}")
    if flow.shape[2:] != src.shape[2:]:
        raise ValueError(f"warp: spatial shapes differ: src {tuple(src.shape[2:])}, flow {tuple(flow.shape[2:])}")
    out_dtype = src.dtype
    if not src.is_floating_point():
        if mode != "nearest":
            raise ValueError("warp: an integer tensor (labels) can only be warped with mode='nearest'")
        src = src.to(torch.float64 if flow.dtype == torch.float64 else torch.float32)
    grid = _sampling_grid(flow)
    grid = grid.to(src.dtype)
    batch = max(src.shape[0], grid.shape[0])
    if src.shape[0] != batch:
        if src.shape[0] != 1:
            raise ValueError(f"warp: batch sizes differ: src {src.shape[0]}, flow {grid.shape[0]}")
        src = src.expand(batch, *src.shape[1:])
    if grid.shape[0] != batch:
        if grid.shape[0] != 1:
            raise ValueError(f"warp: batch sizes differ: src {src.shape[0]}, flow {grid.shape[0]}")
        grid = grid.expand(batch, *grid.shape[1:])
    out = _grid_sample(src, grid, mode, padding)
    return out if out.dtype == out_dtype else out.round().to(out_dtype)


def sample_at(src: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """``src`` ``(B, C, X, Y, Z)`` read at ``points`` ``(B or 1, X', Y', Z', 3)``: voxel coordinates of
    ``src``, component ``c`` along its axis ``c`` (the convention of this module; :func:`warp` is the
    case ``points = p + flow(p)``). Returns ``(B, C, X', Y', Z')``. The one place that turns voxel
    coordinates into ``grid_sample``'s normalised, reversed ones."""
    # grid_sample reads (z, y, x), each in [-1, 1] across src; Python scales: no host-to-device copy
    grid = torch.stack([points[..., axis] * (2.0 / max(src.shape[2 + axis] - 1, 1)) - 1.0 for axis in (2, 1, 0)], dim=-1).to(src.dtype)
    if grid.shape[0] != src.shape[0]:
        grid = grid.expand(src.shape[0], *grid.shape[1:])
    return _grid_sample(src, grid, mode, padding)


SLAB_POINTS = 4_096  # fewer points: not worth the split (svf's coarsest level, ~17k points, gained a quarter)


def _grid_sample(src: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` (align_corners=True), on the CPU cut into one slab of points per thread.

    torch's CPU kernel for 3-D sampling runs its batch items in parallel and nothing else, so one
    volume would use one core however many there are. Here the points of a single volume are cut
    into ``torch.get_num_threads()`` equal runs, sampled as a batch of that many (the source
    broadcast, not copied) and put back in place: the same values; gradients the same up to the
    order in which the slabs' contributions to the source are summed.
    """
    threads = torch.get_num_threads()
    points = grid.shape[1:4].numel()
    if src.device.type != "cpu" or grid.shape[0] != 1 or threads < 2 or points < SLAB_POINTS:
        return F.grid_sample(src, grid, mode=mode, padding_mode=padding, align_corners=True)
    run = -(-points // threads)
    slabs = F.pad(grid.reshape(points, 3), (0, 0, 0, threads * run - points)).reshape(threads, 1, 1, run, 3)
    out = F.grid_sample(src.expand(threads, *src.shape[1:]), slabs, mode=mode, padding_mode=padding, align_corners=True)
    channels = src.shape[1]
    return out.permute(1, 0, 2, 3, 4).reshape(channels, threads * run)[:, :points].reshape(1, channels, *grid.shape[1:4])


def gaussian_blur(x: torch.Tensor, sigma: float | Sequence[float] | Sequence[Sequence[float]]) -> torch.Tensor:
    """``x`` ``(B, C, X, Y, Z)`` smoothed by a separable Gaussian of ``sigma`` voxels: one value, one
    per axis, or one row of three per channel (0: that axis or channel untouched). All channels go
    through one grouped convolution per axis. The kernels are built on ``x``'s device from Python
    numbers: a CPU tensor copied to a GPU would wait for its queue at every optimiser step."""
    channels = x.shape[1]
    if isinstance(sigma, (int, float)):
        sigma = [float(sigma)] * 3
    rows = [list(map(float, row)) for row in sigma] if isinstance(sigma[0], Sequence) else [list(map(float, sigma))] * channels
    if len(rows) != channels or any(len(row) != 3 for row in rows):
        raise ValueError(f"gaussian_blur: sigma must be a number, 3 numbers or {channels} rows of 3, got {sigma}")
    for axis in range(3):
        wanted = [row[axis] for row in rows]
        if max(wanted) <= 0:
            continue
        radius = max(1, math.ceil(3.0 * max(wanted)))
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
        kernels = torch.stack([torch.exp(-0.5 * (taps / s) ** 2) if s > 0 else (taps == 0).double() for s in wanted])
        kernels = (kernels / kernels.sum(1, keepdim=True)).to(x.dtype)
        shape, padding = [channels, 1, 1, 1, 1], [0] * 6
        shape[2 + axis] = 2 * radius + 1
        padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, padding, mode="replicate"), kernels.view(shape), groups=channels)
    return x


def compose(outer: torch.Tensor, inner: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Flow of ``phi_outer o phi_inner``: ``p -> p + inner(p) + outer(p + inner(p))``.

    Warping with the result equals warping with ``outer`` first, then with ``inner``:
    ``warp(warp(src, outer), inner) ~= warp(src, compose(outer, inner))``.
    """
    _check_flow(outer, "outer")
    _check_flow(inner, "inner")
    return inner + warp(outer, inner, mode="bilinear", padding=padding)


def integrate(velocity: torch.Tensor, steps: int = 7, downsize: int = 1) -> torch.Tensor:
    """Flow of the stationary velocity field ``velocity`` at time 1, by scaling and squaring.

    ``phi = exp(v)``: start from ``v / 2**steps`` (a map close to the identity) and compose it with
    itself ``steps`` times: ``flow <- flow + flow o (id + flow)``. ``steps=0`` returns the velocity
    (the small-deformation approximation). Points sampled outside the grid take the border value.

    ``downsize > 1`` integrates on a grid ``downsize`` times coarser (``ceil(n / downsize)`` voxels,
    first and last voxel centres shared) and resizes the flow back, as VoxelMorph-diff does: the
    squaring steps are the costliest part of a CPU training step, and a velocity that the network
    produced on that coarse grid (then upsampled) loses nothing on the way down.
    """
    _check_flow(velocity, "velocity")
    if steps < 0:
        raise ValueError(f"integrate: steps must be >= 0, got {steps}")
    if downsize < 1:
        raise ValueError(f"integrate: downsize must be >= 1, got {downsize}")
    if steps == 0:
        return velocity
    full = velocity.shape[2:]
    coarse = tuple(-(-n // downsize) for n in full)
    flow = resize(velocity, coarse, align_corners=True) / (2.0**steps)
    for _ in range(steps):
        flow = flow + warp(flow, flow, mode="bilinear", padding="border")
    return resize(flow, full, align_corners=True)


def _derivative(field: torch.Tensor, dim: int) -> torch.Tensor:
    """d field / d axis (unit spacing): central differences inside, one-sided at the edges."""
    if field.shape[dim] < 2:
        return torch.zeros_like(field)
    return torch.gradient(field, dim=dim, edge_order=1)[0]


def jacobian_determinant(flow: torch.Tensor) -> torch.Tensor:
    """``det(I + grad flow)`` at every voxel, ``(B, X, Y, Z)``: the Jacobian of ``p -> p + flow(p)``.

    Central differences in voxel units (one-sided on the outer faces, 0 along an axis of one
    voxel). ``> 0`` everywhere means no folding; ``< 1`` is local compression of the sampled source.
    """
    _check_flow(flow)
    # J[i][j] = delta_ij + d flow_i / d x_j
    grads = [_derivative(flow, dim) for dim in (2, 3, 4)]  # grads[j][:, i] = d flow_i / d x_j
    J = [[grads[j][:, i] + (1.0 if i == j else 0.0) for j in range(3)] for i in range(3)]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )


def resize(flow: torch.Tensor, shape: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """A flow resampled (trilinearly) onto a grid of ``shape`` covering the same field of view,
    its vectors rescaled into the new grid's voxel units.

    ``align_corners=False`` (default): the two grids share their outer voxel *edges* (the usual
    meaning of resampling a volume to another size: a 182-voxel 1 mm axis and a 91-voxel 2 mm axis
    span the same extent), so component ``c`` is scaled by the size ratio ``new_c / old_c``.
    ``align_corners=True``: the grids share their first and last voxel *centres*, so the ratio is
    ``(new_c - 1) / (old_c - 1)``. Use whichever matches how the images were resampled. An axis of
    one voxel falls back to the size ratio.
    """
    _check_flow(flow)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"resize: a 3-D shape is needed, got {shape}")
    old = flow.shape[2:]
    if tuple(old) == shape:
        return flow
    ratios = []
    for n_old, n_new in zip(old, shape):
        if align_corners and n_old > 1 and n_new > 1:
            ratios.append((n_new - 1) / (n_old - 1))
        else:
            ratios.append(n_new / n_old)
    out = F.interpolate(flow, size=shape, mode="trilinear", align_corners=align_corners)
    return out * torch.tensor(ratios, device=flow.device, dtype=flow.dtype).view(1, 3, 1, 1, 1)


def upsample2(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``x`` on the grid of a stride-2 convolution (padding 1) brought back to its input grid ``shape``.

    Voxel ``i`` of the stride-2 grid sits at input voxel ``2 i``, so input voxel ``p`` is read at
    ``p / 2`` (trilinear, border values past the last voxel). Unlike ``F.interpolate`` with either
    ``align_corners`` setting, this keeps every coarse voxel exactly where the convolution computed
    it. Values are not rescaled: multiply a displacement in coarse voxels by 2 yourself.
    """
    shape = tuple(int(n) for n in shape)
    if x.dim() != 5 or len(shape) != 3:
        raise ValueError(f"upsample2: expected (B, C, X, Y, Z) and a 3-D shape, got {tuple(x.shape)} and {shape}")
    return sample_at(x, identity(shape, device=x.device, dtype=x.dtype).permute(0, 2, 3, 4, 1) * 0.5)
