"""Registration pairs synthesized from label maps (SynthMorph style)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from atlasreg import AtlasregError  # noqa: E402
from atlasreg.synth_pairs import SynthPairs, pair_seed  # noqa: E402
from atlasreg.volume import image, zscore  # noqa: E402

from conftest import blob_labels  # noqa: E402


@pytest.fixture(scope="module")
def pairs():
    second = blob_labels((28, 30, 26), shift=(2, -1, 1))
    second[second == 4] = 8  # labels 1-4 and 1-3, 8
    return SynthPairs([blob_labels((28, 30, 26)), second], crop=(24, 24, 24))


def test_same_seed_same_pair_byte_for_byte(pairs):
    a, b = pairs.pair(7), pairs.pair(7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(pairs.pair(8)[0], a[0])


def test_shapes_labels_and_normalisation(pairs):
    moving, fixed, moving_labels, fixed_labels = pairs.pair(3)
    assert moving.shape == fixed.shape == moving_labels.shape == fixed_labels.shape == (1, 24, 24, 24)
    assert set(torch.unique(moving_labels).tolist()) <= {0, 1, 2, 3, 4, 8}  # original label values, nothing new
    for img in (moving, fixed):
        assert img.dtype == torch.float32 and torch.isfinite(img).all()


def test_contrast_is_randomised_per_pair_and_shared_within_it(pairs):
    """Mean intensity per label: the ordering of tissues changes from pair to pair (contrast-agnostic
    training), while the two images of one pair agree (what local NCC compares)."""

    def label_means(image, labels):
        return np.array([image[labels == k].mean().item() for k in (1, 2, 3)])

    orders, agreement = set(), []
    for seed in range(12):
        moving, fixed, ml, fl = pairs.pair(seed)
        if not all((ml == k).sum() > 20 and (fl == k).sum() > 20 for k in (1, 2, 3)):
            continue
        m, f = label_means(moving, ml), label_means(fixed, fl)
        orders.add(tuple(np.argsort(m)))
        agreement.append(np.corrcoef(m, f)[0, 1])
    assert len(orders) >= 3
    assert np.median(agreement) > 0.8


def test_sides_are_deformed_independently(pairs):
    _, _, moving_labels, fixed_labels = pairs.pair(5)
    assert not torch.equal(moving_labels, fixed_labels)


def test_images_are_normalised_like_the_network_input_at_inference(pairs):
    moving = pairs.pair(2)[0][0].numpy()
    np.testing.assert_allclose(zscore(image(moving, np.eye(4))).array, moving, atol=1e-5)  # already z-scored: a fixed point


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
