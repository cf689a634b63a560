"""Registration pairs synthesized from label maps (SynthMorph style)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from atlasreg import AtlasregError  # noqa: E402
from atlasreg.synth_pairs import SynthPairs, SynthSettings, pair_seed  # noqa: E402

from conftest import blob_labels  # noqa: E402


@pytest.fixture(scope="module")
def pairs():
    second = blob_labels((28, 30, 26), shift=(2, -1, 1))
    second[second == 4] = 8  # labels 1-4 and 1-3, 8
    return SynthPairs([blob_labels((28, 30, 26)), second], crop=(24, 24, 24))


FIELDS = ("moving", "fixed", "moving_labels", "fixed_labels", "fixed_view")


def test_same_seed_same_pair_byte_for_byte(pairs):
    a, b = pairs.pair(7, view=True), pairs.pair(7, view=True)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(pairs.pair(8).moving, a.moving)


def test_asking_for_the_view_leaves_the_pair_unchanged(pairs):
    with_view, without = pairs.pair(4, view=True), pairs.pair(4)
    assert without.fixed_view is None
    for name in FIELDS[:4]:
        assert torch.equal(getattr(with_view, name), getattr(without, name))


def test_shapes_labels_and_normalisation(pairs):
    p = pairs.pair(3, view=True)
    assert p.moving.shape == p.fixed.shape == p.moving_labels.shape == p.fixed_labels.shape == p.fixed_view.shape == (1, 24, 24, 24)
    assert set(torch.unique(p.moving_labels).tolist()) <= {0, 1, 2, 3, 4, 8}  # original label values, nothing new
    assert p.moving_labels.dtype == p.fixed_labels.dtype == torch.int64
    for img in (p.moving, p.fixed, p.fixed_view):
        assert img.dtype == torch.float32 and torch.isfinite(img).all()


def _label_means(image, labels, values=(1, 2, 3)):
    return np.array([image[labels == k].mean().item() for k in values])


def test_each_image_draws_its_own_contrast(pairs):
    """Mean intensity per label: the ordering of tissues changes from image to image, also between
    the two images of one pair and the view (contrast-agnostic across the pair)."""
    orders, differ = set(), 0
    for seed in range(12):
        p = pairs.pair(seed, view=True)
        if not all((p.moving_labels == k).sum() > 20 and (p.fixed_labels == k).sum() > 20 for k in (1, 2, 3)):
            continue
        m, f, v = (_label_means(image, labels) for image, labels in
                   ((p.moving, p.moving_labels), (p.fixed, p.fixed_labels), (p.fixed_view, p.fixed_labels)))
        orders |= {tuple(np.argsort(m)), tuple(np.argsort(f))}
        differ += tuple(np.argsort(m)) != tuple(np.argsort(f))
        differ += tuple(np.argsort(f)) != tuple(np.argsort(v))
    assert len(orders) >= 4
    assert differ >= 6


def test_contrast_tables_include_t1_and_inverted_orders():
    """Realistic tables: white matter (2) above cortex (3) above CSF (4) in a T1 draw, and the other
    way round in an inverted one; both occur among a few dozen draws."""
    maps = np.zeros((12, 12, 12), np.int32)
    maps[:4], maps[4:8], maps[8:] = 2, 3, 4
    synth = SynthPairs([maps], crop=(12, 12, 12), settings=SynthSettings(presets=1.0))
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        means, _ = synth._contrast(gen)
        wm, cortex, csf = (means[int(np.searchsorted(synth.labels, k))] for k in (2, 3, 4))
        seen.add("t1" if wm > cortex > csf else "inverted" if wm < cortex < csf else "other")
    assert {"t1", "inverted"} <= seen


def test_sides_are_deformed_independently(pairs):
    p = pairs.pair(5)
    assert not torch.equal(p.moving_labels, p.fixed_labels)


def test_images_are_normalised_like_the_network_input_at_inference(pairs):
    """Brain statistics from the labels: mean 0, std 1 over labels > 0 (the brain that
    ``atlasreg.volume.zscore`` looks for at inference on a skull-stripped image)."""
    for seed in range(3):
        p = pairs.pair(seed)
        moving, brain = p.moving[0].double(), p.moving_labels[0] > 0
        assert moving[brain].mean().item() == pytest.approx(0.0, abs=1e-5)
        assert moving[brain].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_a_pair_depends_on_its_seed_not_on_its_batch(pairs):
    batch = pairs.batch([11, 12], view=True)
    again = pairs.batch([11, 12], view=True)
    for name in FIELDS:
        assert torch.equal(getattr(batch, name), getattr(again, name))  # same seeds: the same batch, byte for byte
    for k, seed in enumerate((11, 12)):
        alone = pairs.pair(seed, view=True)
        for name in FIELDS:
            torch.testing.assert_close(getattr(batch, name)[k], getattr(alone, name), atol=1e-5, rtol=1e-5)


def test_pair_seed_depends_on_seed_step_and_index_only():
    assert pair_seed(0, 3, 1) == pair_seed(0, 3, 1)
    assert len({pair_seed(0, 3, 1), pair_seed(0, 3, 0), pair_seed(0, 2, 1), pair_seed(1, 3, 1)}) == 4


def test_bad_inputs_are_refused():
    with pytest.raises(AtlasregError, match="at least one"):
        SynthPairs([], (8, 8, 8))
    with pytest.raises(AtlasregError, match="share one grid"):
        SynthPairs([np.ones((8, 8, 8), np.int32), np.ones((8, 8, 9), np.int32)], (8, 8, 8))
    with pytest.raises(AtlasregError, match="larger than the grid"):
        SynthPairs([np.ones((8, 8, 8), np.int32)], (16, 8, 8))
