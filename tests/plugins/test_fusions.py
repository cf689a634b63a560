"""Label fusion: exact voting results, tie rule, similarity weighting, STAPLE/JLF quality, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from atlasreg.errors import AtlasregError
from atlasreg.plugin_api import Fusion
from atlasreg.volume import Volume
from atlasreg_plugins.voting import MajorityVote, WeightedVote, atlasreg_fusions

AFFINE = np.diag([1.5, 1.0, 1.2, 1.0])
INTENSITY = {0: 0.0, 1: 100.0, 2: 200.0, 5: 150.0}  # label 5 (not 3) so renumbering bugs show


def labels_of(array: np.ndarray) -> Volume:
    return Volume(np.asarray(array, dtype=np.int32), AFFINE, is_labels=True)


def image_of(labels: np.ndarray, rng: np.random.Generator, noise: float = 5.0) -> Volume:
    """An image whose intensity is set by the label, plus Gaussian noise."""
    array = np.vectorize(INTENSITY.get, otypes=[np.float32])(labels)
    return Volume((array + rng.normal(0.0, noise, labels.shape)).astype(np.float32), AFFINE, is_labels=False)


def phantom(n: int = 24) -> np.ndarray:
    """Background, a big ball (1) holding a small ball (2), and a slab (5)."""
    grid = np.indices((n, n, n)) - n / 2 + 0.5
    radius = np.sqrt((grid**2).sum(axis=0))
    truth = np.zeros((n, n, n), dtype=np.int32)
    truth[radius < n * 0.35] = 1
    truth[radius < n * 0.15] = 2
    truth[:, :, : n // 6] = 5
    return truth


def corrupted_atlases(truth: np.ndarray, rng: np.random.Generator) -> tuple[list[Volume], list[Volume]]:
    """Atlases = truth misregistered differently (a shift per atlas), with images matching their labels."""
    shifts = [(2, 0, 0), (0, -2, 0), (-1, 1, 2)]
    labels = [np.roll(truth, shift, axis=(0, 1, 2)) for shift in shifts]
    return [image_of(lab, rng) for lab in labels], [labels_of(lab) for lab in labels]


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the non-zero labels of ``b``."""
    values = [v for v in np.unique(b) if v != 0]
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in values]))


def run(method: Fusion, target: Volume, images: list[Volume], labels: list[Volume], **given) -> np.ndarray:
    result = method.fuse(target, images, labels, **method.resolve_options(given))
    assert result.array.dtype == np.int32 and result.same_grid(target)
    return result.array


def test_hook_lists_majority_and_weighted():
    assert [m.name for m in atlasreg_fusions()] == ["majority", "weighted"]


def test_majority_exact_with_ties_to_smallest_label():
    votes = np.array(
        [
            [0, 1, 2, 3, 7],
            [0, 1, 3, 2, 7],
            [1, 2, 3, 1, 2],
            [4, 1, 5, 4, 2],
        ]
    )
    labels = [labels_of(row.reshape(1, 1, 5)) for row in votes]
    target = Volume(np.zeros((1, 1, 5), np.float32), AFFINE, is_labels=False)
    fused = run(MajorityVote(), target, [target] * 4, labels)
    # voxel 3: four-way tie -> 1; voxel 4: 7 (atlases 0, 1) ties 2 (atlases 2, 3) -> 2
    np.testing.assert_array_equal(fused.ravel(), [0, 1, 3, 1, 2])


def test_majority_outvotes_one_wrong_atlas():
    rng = np.random.default_rng(0)
    truth = phantom(16)
    wrong = np.roll(truth, 5, axis=0)
    labels = [labels_of(truth), labels_of(wrong), labels_of(truth)]
    images = [image_of(lab.array, rng) for lab in labels]
    fused = run(MajorityVote(), image_of(truth, rng), images, labels)
    np.testing.assert_array_equal(fused, truth)


def test_weighted_vote_follows_the_atlas_whose_image_matches():
    rng = np.random.default_rng(1)
    truth = np.zeros((20, 20, 20), dtype=np.int32)
    truth[5:15, 5:15, 5:15] = 1
    truth[8:12, 8:12, 8:12] = 2  # the disputed region
    truth[5:15, 5:15, 5:7] = 5  # a second tissue in every image, as in any scan (z-scores use the foreground's spread)
    wrong = np.where(truth == 2, 1, truth)  # two atlases call it 1, with images to match
    target = image_of(truth, rng)
    good = Volume(target.array.copy(), AFFINE, is_labels=False)
    labels = [labels_of(truth), labels_of(wrong), labels_of(wrong)]
    images = [good, image_of(wrong, rng), image_of(wrong, rng)]
    majority = run(MajorityVote(), target, images, labels)
    assert np.all(majority[truth == 2] == 1)  # outvoted without weighting
    np.testing.assert_array_equal(run(WeightedVote(), target, images, labels), truth)


def test_weighted_vote_with_identical_images_is_majority():
    rng = np.random.default_rng(2)
    truth = phantom(16)
    target = image_of(truth, rng)
    labels = [labels_of(truth), labels_of(np.roll(truth, 3, axis=1)), labels_of(np.roll(truth, -3, axis=2))]
    images = [target] * 3
    np.testing.assert_array_equal(
        run(WeightedVote(), target, images, labels), run(MajorityVote(), target, images, labels)
    )


def fusion_methods() -> list[Fusion]:
    from atlasreg_plugins.ants.jlf import JointLabelFusion
    from atlasreg_plugins.simpleitk.staple import Staple

    methods = [MajorityVote(), WeightedVote(), Staple(), JointLabelFusion()]
    return [m for m in methods if m.unavailable_reason() is None]


@pytest.mark.parametrize("name", ["staple", "jlf"])
def test_staple_and_jlf_beat_the_average_atlas(name: str):
    if name == "staple":
        pytest.importorskip("SimpleITK")
        from atlasreg_plugins.simpleitk.staple import Staple as Method
    else:
        pytest.importorskip("ants")
        from atlasreg_plugins.ants.jlf import JointLabelFusion as Method
    rng = np.random.default_rng(3)
    truth = phantom(20)
    target = image_of(truth, rng)
    images, labels = corrupted_atlases(truth, rng)
    fused = run(Method(), target, images, labels)
    individual = [mean_dice(lab.array, truth) for lab in labels]
    assert mean_dice(fused, truth) >= np.mean(individual)
    assert set(np.unique(fused)) <= set(np.unique(np.stack([lab.array for lab in labels])))


def test_staple_resolves_undecided_voxels_by_majority():
    pytest.importorskip("SimpleITK")
    from atlasreg_plugins.simpleitk.staple import Staple

    # two symmetric raters: STAPLE cannot decide where they disagree; majority's tie rule picks 1
    first = labels_of(np.tile([1, 1, 2, 2], 4).reshape(1, 4, 4))
    second = labels_of(np.tile([1, 2, 1, 2], 4).reshape(1, 4, 4))
    target = Volume(np.zeros((1, 4, 4), np.float32), AFFINE, is_labels=False)
    fused = run(Staple(), target, [target, target], [first, second])
    np.testing.assert_array_equal(fused, np.tile([1, 1, 1, 2], 4).reshape(1, 4, 4))


def test_jlf_lets_background_win_inside_the_dilated_mask():
    pytest.importorskip("ants")
    from atlasreg_plugins.ants.jlf import JointLabelFusion

    rng = np.random.default_rng(4)
    truth = np.zeros((16, 16, 16), dtype=np.int32)
    truth[6:10, 6:10, 6:10] = 5
    target = image_of(truth, rng)
    images, labels = [image_of(truth, rng), image_of(truth, rng)], [labels_of(truth), labels_of(truth)]
    # ANTs has no background posterior: without renumbering, the 2-voxel ring would become 5
    np.testing.assert_array_equal(run(JointLabelFusion(), target, images, labels), truth)


def test_jlf_single_atlas_is_returned_as_is():
    from atlasreg_plugins.ants.jlf import JointLabelFusion

    truth = phantom(12)
    target = image_of(truth, np.random.default_rng(6))
    np.testing.assert_array_equal(run(JointLabelFusion(), target, [target], [labels_of(truth)]), truth)


@pytest.mark.parametrize("method", fusion_methods(), ids=lambda m: m.name)
def test_bad_inputs_raise(method: Fusion):
    rng = np.random.default_rng(5)
    truth = phantom(12)
    target = image_of(truth, rng)
    image, label = image_of(truth, rng), labels_of(truth)
    options = method.resolve_options({})
    with pytest.raises(AtlasregError, match="at least one atlas"):
        method.fuse(target, [], [], **options)
    with pytest.raises(AtlasregError, match="2 atlas images but 1 label maps"):
        method.fuse(target, [image, image], [label], **options)
    shifted = Volume(truth.astype(np.int32), AFFINE @ np.diag([1.0, 1.0, 2.0, 1.0]), is_labels=True)
    with pytest.raises(AtlasregError, match="not on the target grid"):
        method.fuse(target, [image, image], [label, shifted], **options)
    cropped = Volume(truth[:-1].astype(np.int32), AFFINE, is_labels=True)
    with pytest.raises(AtlasregError, match="not on the target grid"):
        method.fuse(target, [image, image], [label, cropped], **options)
    with pytest.raises(AtlasregError, match="not an integer label map"):
        method.fuse(target, [image, image], [label, image], **options)


def test_compact_renumbering_round_trips_sparse_labels():
    from atlasreg.fusion import from_compact, label_union, to_compact

    labels = [labels_of(np.array([[[0, 2035, 17]]])), labels_of(np.array([[[17, 4, 0]]]))]
    values = label_union(labels)
    compact = [to_compact(values, volume) for volume in labels]
    assert compact[0].is_labels and compact[0].array.tolist() == [[[1, 4, 3]]] and compact[1].array.tolist() == [[[3, 2, 1]]]
    for volume, dense in zip(labels, compact):
        np.testing.assert_array_equal(from_compact(values, dense.array), volume.array)


def test_plugins_never_import_each_other():
    """A plugin module may import the core and its own package, never another first-party plugin."""
    import ast
    from pathlib import Path

    import atlasreg_plugins

    root = Path(atlasreg_plugins.__file__).parent
    plugins = {path.stem for path in root.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    plugins -= {"__init__"}
    for path in root.rglob("*.py"):
        own = path.relative_to(root).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the file's package
                    package = list(path.relative_to(root).parent.parts)[: len(path.relative_to(root).parent.parts) - node.level + 1]
                    target = (package + (node.module or "").split("."))[0] if package or node.module else ""
                else:
                    parts = (node.module or "").split(".")
                    target = parts[1] if parts[0] == "atlasreg_plugins" and len(parts) > 1 else ""
                assert target in ("", own) or target not in plugins, f"{path.name} imports plugin {target}"
