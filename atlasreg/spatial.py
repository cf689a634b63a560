"""Grids and resampling: voxel <-> world (RAS mm), sampling at arbitrary points, reorientation, crop/pad.

Images are sampled linearly, label maps by nearest neighbour (or one-hot linear: each label's
indicator interpolated, the largest wins) so a label map only ever holds labels it started with.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .volume import Volume

LABEL_INTERPOLATIONS = ("nearest", "onehot")


def voxel_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel indices of a grid, shape (X, Y, Z, 3), float32."""
    return np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), axis=-1)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to an (..., 3) array of points."""
    return (points @ matrix[:3, :3].T.astype(np.float32)) + matrix[:3, 3].astype(np.float32)


def sample(volume: Volume, voxel_coords: np.ndarray, label_interp: str = "nearest") -> np.ndarray:
    """Values of ``volume`` at (..., 3) voxel coordinates of its own grid.

    As in ITK, a point within half a voxel of the edge takes the edge value; farther out it is 0.
    """
    coords = np.moveaxis(voxel_coords, -1, 0)
    inside = np.ones(coords.shape[1:], dtype=bool)
    for axis, n in enumerate(volume.shape):
        inside &= (coords[axis] >= -0.5) & (coords[axis] <= n - 0.5)
    if not volume.is_labels:
        values = ndimage.map_coordinates(volume.array, coords, order=1, mode="nearest").astype(np.float32)
    elif label_interp == "nearest":
        values = ndimage.map_coordinates(volume.array, coords, order=0, mode="nearest")
    elif label_interp == "onehot":
        values = _sample_onehot(volume.array, coords)
    else:
        raise AtlasregError(f"label interpolation {label_interp!r}: choose one of {', '.join(LABEL_INTERPOLATIONS)}")
    values[~inside] = 0
    return values


def _sample_onehot(labels: np.ndarray, coords: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Each label's indicator interpolated linearly; the label with the largest weight wins (the
    smallest label on a tie).

    A point's linear weights fall on its 8 neighbouring voxels, so only their labels can win: each
    is scored by the summed weight of the neighbours holding it. The cost is 8 x 8 comparisons per
    point whatever the number of labels (20000 labels cost what 2 do), in chunks of ``chunk`` points.
    """
    shape = coords.shape[1:]
    flat = coords.reshape(3, -1)
    out = np.empty(flat.shape[1], dtype=labels.dtype)
    for start in range(0, flat.shape[1], chunk):
        out[start:start + chunk] = _onehot_points(labels, flat[:, start:start + chunk].astype(np.float64))
    return out.reshape(shape)


def _onehot_points(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``_sample_onehot`` at (3, N) voxel coordinates; beyond the edge the edge voxel's label (mode "nearest")."""
    low, frac = [], []
    for axis, n in enumerate(labels.shape):
        c = np.clip(points[axis], 0, n - 1)
        i = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
        low.append(i)
        frac.append(c - i)
    corners = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    weights, values = [], []
    for corner in corners:
        index = tuple(np.minimum(i + d, n - 1) for i, d, n in zip(low, corner, labels.shape))
        weights.append(np.prod([f if d else 1 - f for f, d in zip(frac, corner)], axis=0))
        values.append(labels[index])
    best_weight = np.full(points.shape[1], -1.0)
    best = np.zeros(points.shape[1], dtype=labels.dtype)
    for value in values:
        total = sum(w * (v == value) for w, v in zip(weights, values))
        better = (total > best_weight) | ((total == best_weight) & (value < best))
        best_weight[better] = total[better]
        best[better] = value[better]
    return best


def sample_torch(volume: Volume, voxel_coords, label_interp: str = "nearest") -> np.ndarray:
    """:func:`sample` in torch, on the device of ``voxel_coords`` (a float tensor (..., 3)): the same
    values (linear for images, nearest or one-hot for labels, 0 beyond half a voxel outside),
    computed where the coordinates are, e.g. on the GPU that made a field. Labels are gathered as
    integers, never carried through floats."""
    import torch

    from .flow import sample_at

    if label_interp not in LABEL_INTERPOLATIONS:
        raise AtlasregError(f"label interpolation {label_interp!r}: choose one of {', '.join(LABEL_INTERPOLATIONS)}")
    device = voxel_coords.device
    shape = torch.tensor(volume.shape, device=device, dtype=voxel_coords.dtype)
    inside = ((voxel_coords >= -0.5) & (voxel_coords <= shape - 0.5)).all(dim=-1)
    if not volume.is_labels:
        data = torch.from_numpy(volume.array).to(device, torch.float32)[None, None]
        out = sample_at(data, voxel_coords.reshape(1, *voxel_coords.shape[:-1], 3))[0, 0]
    else:
        labels = torch.from_numpy(volume.array).to(device).reshape(-1)
        points = voxel_coords.reshape(-1, 3).clamp(min=torch.zeros_like(shape), max=shape - 1)
        strides = torch.tensor([volume.shape[1] * volume.shape[2], volume.shape[2], 1], device=device)
        if label_interp == "nearest":
            out = labels[(torch.floor(points + 0.5).long() * strides).sum(-1)]
        else:
            out = _onehot_torch(labels, points, shape, strides)
        out = out.reshape(voxel_coords.shape[:-1])
    return torch.where(inside, out, torch.zeros_like(out)).cpu().numpy()


def _onehot_torch(labels, points, shape, strides):
    """:func:`_onehot_points` in torch: the label of the 8 neighbours with the largest summed
    linear weight (the smallest label on a tie), at (N, 3) voxel coordinates inside the grid."""
    import torch

    low = torch.minimum(torch.floor(points), (shape - 2).clamp(min=0))
    frac = points - low
    values, weights = [], []
    for corner in [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]:
        step = torch.tensor(corner, device=points.device, dtype=points.dtype)
        index = torch.minimum(low + step, shape - 1).long()
        values.append(labels[(index * strides).sum(-1)])
        weights.append(torch.where(step.bool(), frac, 1 - frac).prod(-1))
    best_weight = torch.full_like(weights[0], -1.0)
    best = torch.zeros_like(values[0])
    for value in values:
        total = sum(w * (v == value) for w, v in zip(weights, values))
        better = (total > best_weight) | ((total == best_weight) & (value < best))
        best_weight = torch.where(better, total, best_weight)
        best = torch.where(better, value, best)
    return best


def resample(volume: Volume, shape: tuple[int, int, int], affine: np.ndarray, label_interp: str = "nearest") -> Volume:
    """``volume`` on another grid (same world positions)."""
    matrix = np.linalg.inv(volume.affine) @ affine
    coords = apply_matrix(matrix, voxel_grid(shape))
    return Volume(sample(volume, coords, label_interp), affine, is_labels=volume.is_labels)


def resample_to_spacing(volume: Volume, spacing: float, label_interp: str = "nearest") -> Volume:
    """``volume`` on an isotropic grid of ``spacing`` mm with the same orientation, covering the same field of view."""
    if not (np.isfinite(spacing) and spacing > 0):
        raise AtlasregError(f"spacing {spacing}: must be a finite number > 0 (mm)")
    old = volume.spacing
    shape = tuple(max(1, int(round(n * s / spacing))) for n, s in zip(volume.shape, old))
    scale = np.diag([spacing / s for s in old] + [1.0])
    affine = volume.affine @ scale
    # keep the field of view centred: shift by half a voxel difference along each axis
    shift = (np.array(volume.shape) * old - np.array(shape) * spacing) / 2.0 / old + (spacing / old - 1) / 2.0
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ shift
    return resample(volume, shape, affine, label_interp)


def reorient(volume: Volume, axcodes: str = "RAS") -> Volume:
    """Same data with array axes flipped/permuted to the given orientation (no interpolation)."""
    current = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(tuple(axcodes))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(np.ascontiguousarray(array), affine, is_labels=volume.is_labels)


def crop_or_pad(volume: Volume, shape: tuple[int, int, int], center: tuple[float, float, float] | None = None) -> Volume:
    """A ``shape`` window of ``volume`` centred on voxel ``center`` (default: the middle), zero-padded."""
    if center is None:
        center = tuple((n - 1) / 2.0 for n in volume.shape)
    start = [int(round(c - (n - 1) / 2.0)) for c, n in zip(center, shape)]
    out = np.zeros(shape, dtype=volume.array.dtype)
    src, dst = [], []
    for s, n_new, n_old in zip(start, shape, volume.shape):
        lo, hi = max(s, 0), min(s + n_new, n_old)
        if hi <= lo:
            src.append(slice(0, 0))
            dst.append(slice(0, 0))
        else:
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume.array[tuple(src)]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array(start, dtype=float) + volume.affine[:3, 3]
    return Volume(out, affine, is_labels=volume.is_labels)


def crop_to_foreground(volume: Volume, margin: int = 0) -> Volume:
    """The bounding box of the non-zero voxels, plus ``margin`` voxels each side."""
    nonzero = np.argwhere(volume.array != 0)
    if nonzero.size == 0:
        raise AtlasregError("volume is empty: nothing to crop to")
    lo = np.maximum(nonzero.min(0) - margin, 0)
    hi = np.minimum(nonzero.max(0) + 1 + margin, volume.shape)
    shape = tuple(int(h - l) for l, h in zip(lo, hi))
    return crop_or_pad(volume, shape, tuple((l + h - 1) / 2.0 for l, h in zip(lo, hi)))
