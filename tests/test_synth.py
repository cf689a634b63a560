"""Tests for atlasreg.synth: label map -> synthetic MRI."""

from __future__ import annotations

import numpy as np
import pytest

from atlasreg.errors import AtlasregError
from atlasreg.synth import skull_strip, synthesize
from atlasreg.volume import Volume, image, label_map

from conftest import real_labelmaps


WM, CORTEX, CSF = (2, 41), (3, 42), (4, 43, 24)
QUIET = dict(blur_mm=0.0, bias_strength=0.0, noise=0.0)  # only the Gaussian mixture


def phantom(size: int = 40, spacing: float = 1.5) -> Volume:
    """Nested spheres: white matter in cortex in CSF in scalp (label 515), a ventricle in the middle."""
    centre = (size - 1) / 2
    grid = np.indices((size,) * 3)
    radius = np.sqrt(((grid - centre) ** 2).sum(axis=0)) / size
    array = np.zeros((size,) * 3, dtype=np.int32)
    array[radius < 0.48] = 515
    array[radius < 0.42] = 24
    array[radius < 0.38] = 3
    array[radius < 0.28] = 2
    array[radius < 0.08] = 4
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = [12.5, -40.0, 7.25]
    return label_map(array, affine)


def region_mean(img: np.ndarray, labels: np.ndarray, ids: tuple[int, ...]) -> float:
    return float(img[np.isin(labels, ids)].mean())


def test_same_seed_is_byte_identical_with_every_option_on():
    labels = phantom()
    options = dict(seed=7, deform_mm=3.0, downsample_mm=4.0, skull_strip=False)
    first, second = synthesize(labels, **options), synthesize(labels, **options)
    assert first.array.tobytes() == second.array.tobytes()


@pytest.mark.parametrize("contrast", ["t1", "random"])
def test_different_seeds_give_different_images(contrast):
    labels = phantom()
    a = synthesize(labels, seed=0, contrast=contrast).array
    b = synthesize(labels, seed=1, contrast=contrast).array
    assert np.abs(a - b).mean() > 1.0


def test_output_is_float32_nonnegative_image_on_the_same_grid():
    labels = phantom()
    out = synthesize(labels, seed=3, deform_mm=2.0, downsample_mm=3.0)
    assert out.array.dtype == np.float32
    assert not out.is_labels
    assert out.shape == labels.shape
    assert np.array_equal(out.affine, labels.affine)
    assert out.array.min() >= 0.0
    assert out.array.max() > 50.0  # something was painted


def test_skull_strip_zeroes_non_brain_labels_only():
    labels = phantom()
    stripped = skull_strip(labels)
    assert stripped.array.dtype == np.int32
    assert np.array_equal(stripped.affine, labels.affine)
    assert stripped.array.max() < 100
    brain = labels.array < 100
    assert np.array_equal(stripped.array[brain], labels.array[brain])
    assert np.all(stripped.array[labels.array >= 100] == 0)
    assert np.any(labels.array >= 100)  # the phantom really had something to strip


def test_skull_strip_refuses_images_and_maps_without_brain():
    labels = phantom()
    with pytest.raises(AtlasregError):
        skull_strip(image(labels.array, labels.affine))
    with pytest.raises(AtlasregError):
        skull_strip(label_map(np.where(labels.array > 0, 515, 0), labels.affine))


def test_synthesize_skull_strip_makes_non_brain_background():
    labels = phantom()
    scalp = labels.array == 515
    stripped = synthesize(labels, skull_strip=True, **QUIET).array
    kept = synthesize(labels, skull_strip=False, **QUIET).array
    assert np.all(stripped[scalp] == 0.0)
    assert kept[scalp].mean() > 5.0
    brain = (labels.array > 0) & ~scalp
    assert np.array_equal(stripped[brain], kept[brain])  # same draws for the brain either way


def test_freesurfer_parcels_are_the_tissue_they_parcellate():
    """An aparc+aseg / wmparc map (the built-in atlas's codes): cortical parcels are cortex, white-matter
    parcels white matter, not non-brain labels >= 100 stripped away; the image is that of the aseg map."""
    labels = phantom()
    parcels = labels.array.copy()
    parcels[(labels.array == 3) & (np.indices(parcels.shape)[0] < 20)] = 1028  # ctx-lh-superiorfrontal
    parcels[(labels.array == 3) & (np.indices(parcels.shape)[0] >= 20)] = 2035  # ctx-rh-insula
    parcels[labels.array == 2] = 3001  # wm-lh-bankssts
    aseg = np.where(parcels == 2035, 42, labels.array)
    seeded = synthesize(label_map(parcels, labels.affine), seed=3, **QUIET).array
    assert np.array_equal(seeded, synthesize(label_map(aseg, labels.affine), seed=3, **QUIET).array)
    assert seeded[parcels == 1028].mean() > 50 and seeded[parcels == 3001].mean() > seeded[parcels == 1028].mean()


def test_t1_orders_wm_over_cortex_over_csf_on_phantom():
    labels = phantom()
    for seed in range(5):
        img = synthesize(labels, seed=seed, blur_mm=1.0).array
        wm, cortex, csf = (region_mean(img, labels.array, ids) for ids in (WM, CORTEX, CSF))
        assert wm > cortex + 15 > csf + 35


def test_t2_reverses_the_t1_order_csf_over_cortex_over_wm():
    labels = phantom()
    for seed in range(3):
        img = synthesize(labels, seed=seed, contrast="t2", blur_mm=1.0).array
        wm, cortex, csf = (region_mean(img, labels.array, ids) for ids in (WM, CORTEX, CSF))
        assert csf > cortex + 10 and cortex > wm + 20  # CSF is a thin shell next to the background: blur lowers it


def test_t1_orders_wm_over_cortex_over_csf_on_real_label_maps():
    for labels in real_labelmaps(3):
        for seed in (0, 1):
            img = synthesize(labels, seed=seed, blur_mm=2.0).array
            wm, cortex, csf = (region_mean(img, labels.array, ids) for ids in (WM, CORTEX, CSF))
            assert wm > cortex + 15, (wm, cortex)
            assert cortex > csf + 25, (cortex, csf)
        img = synthesize(labels, seed=0, blur_mm=0.0, bias_strength=0.0).array  # the preset's own scale
        wm, cortex, csf = (region_mean(img, labels.array, ids) for ids in (WM, CORTEX, CSF))
        assert 100 < wm < 120 and 65 < cortex < 85 and 15 < csf < 35


def test_real_label_map_image_keeps_grid_and_background_near_zero():
    labels = next(real_labelmaps(1))
    out = synthesize(labels, seed=2)
    assert out.shape == labels.shape and np.array_equal(out.affine, labels.affine)
    far_background = labels.array == 0
    assert out.array[far_background].mean() < 5.0


def test_random_contrast_differs_from_t1_and_scrambles_the_tissue_order():
    labels = phantom()
    t1 = synthesize(labels, seed=0, **QUIET).array
    rnd = synthesize(labels, seed=0, contrast="random", **QUIET).array
    assert np.abs(t1 - rnd).mean() > 5.0
    wm_brighter = []
    for seed in range(20):
        img = synthesize(labels, seed=seed, contrast="random", **QUIET).array
        wm, csf = region_mean(img, labels.array, WM), region_mean(img, labels.array, CSF)
        assert 0 <= wm < 255 and 0 <= csf < 255
        wm_brighter.append(wm > csf)
    assert 0 < sum(wm_brighter) < len(wm_brighter)


def test_a_seed_gives_a_label_the_same_intensity_on_any_map():
    labels = phantom()
    other = label_map(np.where(labels.array == 3, 17, labels.array), labels.affine)  # another label set
    a = synthesize(labels, seed=4, contrast="random", **QUIET).array
    b = synthesize(other, seed=4, contrast="random", **QUIET).array
    wm = labels.array == 2
    assert np.array_equal(a[wm], b[wm])
    assert a[wm].mean() > 1.0


def test_label_intensities_follow_the_drawn_std():
    labels = phantom()
    img = synthesize(labels, seed=0, **QUIET).array
    wm = img[labels.array == 2]
    assert 2.0 < wm.std() < 8.0  # t1 white matter std is 4 (no blur, bias or noise here)


def test_bias_field_is_smooth_and_multiplicative():
    labels = label_map(np.full((32, 32, 32), 2), np.diag([1.5, 1.5, 1.5, 1.0]))  # all white matter
    flat = synthesize(labels, seed=5, **QUIET).array
    biased = synthesize(labels, seed=5, blur_mm=0.0, bias_strength=0.3, noise=0.0).array
    ratio = biased / flat
    assert np.ptp(ratio) > 0.2  # the field varies across the volume
    slope = np.abs(np.diff(ratio, axis=0)).mean()
    assert np.abs(np.diff(ratio, n=2, axis=0)).mean() < 0.4 * slope  # smoothly (noise would give ~1.7)
    assert 0.8 < np.median(ratio) < 1.25  # and leaves the overall scale roughly alone


def test_noise_is_additive_with_the_requested_std():
    labels = phantom()
    quiet = synthesize(labels, seed=1, **QUIET).array
    noisy = synthesize(labels, seed=1, blur_mm=0.0, bias_strength=0.0, noise=6.0).array
    inside = quiet > 50  # away from the clip at zero
    assert np.std(noisy[inside] - quiet[inside]) == pytest.approx(6.0, rel=0.1)


def test_blur_is_in_millimetres():
    labels = phantom()
    fine = label_map(labels.array, labels.affine @ np.diag([0.5, 0.5, 0.5, 1.0]))  # same voxels, smaller

    def roughness(volume):
        img = synthesize(volume, seed=0, blur_mm=1.5, bias_strength=0.0, noise=0.0).array
        return np.abs(np.diff(img, axis=0)).mean()

    unblurred = np.abs(np.diff(synthesize(labels, seed=0, **QUIET).array, axis=0)).mean()
    assert roughness(fine) < roughness(labels) < unblurred  # 1.5 mm is 2 voxels of fine, 1 of labels


def test_deformation_moves_the_anatomy_smoothly():
    labels = phantom(48, 1.0)
    straight = synthesize(labels, seed=0, **QUIET).array
    bent = synthesize(labels, seed=0, deform_mm=3.0, **QUIET).array
    wm_straight, wm_bent = straight > 95, bent > 95
    overlap = 2 * (wm_straight & wm_bent).sum() / (wm_straight.sum() + wm_bent.sum())
    assert 0.6 < overlap < 0.98


def test_downsampling_lowers_the_resolution():
    labels = phantom(48, 1.0)
    sharp = synthesize(labels, seed=0, **QUIET).array
    coarse = synthesize(labels, seed=0, downsample_mm=4.0, **QUIET).array
    assert coarse.shape == sharp.shape
    wm_core = np.sqrt(((np.indices(sharp.shape) - 23.5) ** 2).sum(axis=0)) < 8  # deep in the WM
    assert coarse[wm_core].std() < 0.5 * sharp[wm_core].std()  # texture averaged out
    assert np.abs(np.diff(coarse, axis=1)).mean() < 0.7 * np.abs(np.diff(sharp, axis=1)).mean()
    assert abs(coarse.mean() - sharp.mean()) < 0.05 * sharp.mean()  # intensities preserved


def test_bad_arguments_raise_atlasreg_error():
    labels = phantom()
    with pytest.raises(AtlasregError, match="contrast"):
        synthesize(labels, contrast="pd")
    with pytest.raises(AtlasregError, match="noise"):
        synthesize(labels, noise=-1.0)
    with pytest.raises(AtlasregError, match="blur_mm"):
        synthesize(labels, blur_mm=float("nan"))
    with pytest.raises(AtlasregError, match="label map"):
        synthesize(image(labels.array, labels.affine))
