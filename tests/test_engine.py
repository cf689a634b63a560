"""The torch engine: affine stage, velocity-field optimiser, and the ``svf`` backend built on them."""

import numpy as np
from scipy import ndimage
import pytest

torch = pytest.importorskip("torch")

import atlasreg  # noqa: E402
from atlasreg import AtlasregError  # noqa: E402
from atlasreg.engine import affine_stage, displacement, optimize_velocity  # noqa: E402
from atlasreg.flow import integrate, warp  # noqa: E402
from atlasreg.transform import Transform  # noqa: E402
from atlasreg.volume import Volume, image  # noqa: E402

from conftest import T1_LIKE, T2_LIKE, blob_labels, brain_only, image_from_labels, real_labelmaps, relabelled  # noqa: E402

FAST_SVF = {"iterations": (30, 20, 5), "device": "cpu"}


def known_affine(degrees=(8.0, -5.0, 12.0), translation=(6.0, -8.0, 4.0), scales=(1.08, 0.93, 1.05)) -> np.ndarray:
    """Fixed world -> moving world: rotation about the origin, axis scaling, translation (mm)."""
    rx, ry, rz = np.radians(degrees)
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    rot_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rot_z @ rot_y @ rot_x @ np.diag(scales)
    matrix[:3, 3] = translation
    return matrix


@pytest.mark.parametrize("dtype", [None, torch.float32])  # float32: what a GPU runs, here on the CPU
def test_torch_affine_recovers_a_known_affine_within_half_a_millimetre(dtype):
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    grid[:3, 3] = -47.0  # centred on the origin
    labels = np.zeros((48, 48, 48), np.int32)
    labels[10:38, 4:44, 13:35] = blob_labels((28, 40, 22))  # anisotropic: the rotation is well defined
    fixed = image(image_from_labels(labels, 3), grid)
    truth = known_affine()
    moving = Transform.from_matrix(fixed, np.linalg.inv(truth)).warp(fixed)  # moving(M x) = fixed(x)
    # a 2 mm level on top of the default 8 / 4 mm ones: sub-voxel precision (the defaults: 0.56 mm here)
    found = affine_stage(moving, fixed, levels=(8.0, 4.0, 2.0), rigid_iterations=(100, 30, 0), affine_iterations=(50, 40, 20), dtype=dtype)
    brain = Transform.identity(fixed).grid_points()[labels > 0]
    error = np.linalg.norm(brain @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=-1)
    assert error.mean() < 0.5 and error.max() < 1.0, f"max error {error.max():.2f} mm, mean {error.mean():.2f} mm"


def test_torch_affine_is_deterministic_and_mse_runs(pair):
    moving, _, fixed, _ = pair
    assert np.array_equal(affine_stage(moving, fixed), affine_stage(moving, fixed))
    assert np.all(np.isfinite(affine_stage(moving, fixed, metric="mse", rigid_iterations=(5, 5), affine_iterations=(5, 5))))


def test_mutual_information_scores_a_nonlinear_intensity_map_as_aligned():
    from atlasreg.engine.similarity import intensity_range, mutual_information

    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(20_000, generator=generator, dtype=torch.float64)
    aligned = torch.exp(3 * fixed) + 0.01 * torch.randn(20_000, generator=generator, dtype=torch.float64)  # no linear map
    shuffled = aligned[torch.randperm(20_000, generator=generator)]
    ranges = dict(fixed_range=intensity_range(fixed), warped_range=intensity_range(aligned))
    assert mutual_information(fixed, aligned, **ranges) < mutual_information(fixed, shuffled, **ranges) - 1.0
    assert abs(mutual_information(fixed, shuffled, **ranges)) < 0.1  # independent: close to 0
    moved = aligned.clone().requires_grad_(True)
    mutual_information(fixed, moved, **ranges).backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0


def test_collecting_plugins_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, atlasreg.registry as r; r.backend_infos(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def smooth_field(shape, amplitude, seed=0):
    """A smooth random velocity (1, 3, *shape), voxels, at most ``amplitude`` in any component."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=generator)
    field = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return field * (amplitude / field.abs().max())


def test_optimiser_recovers_a_known_smooth_displacement():
    labels = blob_labels((40, 40, 40))
    fixed = torch.from_numpy(image_from_labels(labels, 4) / 40.0)[None, None]
    truth = integrate(smooth_field(fixed.shape[2:], 4.0), 7)
    moving = warp(fixed, integrate(-smooth_field(fixed.shape[2:], 4.0), 7))  # exp(-v) undoes exp(v)
    velocity = optimize_velocity(moving, fixed, levels=(2, 1), iterations=(80, 40), weight=0.1)
    found = displacement(velocity, fixed.shape[2:])
    brain = torch.from_numpy(labels > 0)
    error = (found - truth).norm(dim=1)[0][brain]
    before = truth.norm(dim=1)[0][brain]
    assert error.mean() < 0.4 * before.mean(), f"mean error {error.mean():.2f} vs {before.mean():.2f} voxels before"


def test_large_regulariser_keeps_the_map_diffeomorphic(pair):
    moving, _, fixed, _ = pair
    noise = image(np.random.default_rng(0).normal(100, 30, moving.shape), moving.affine)
    transform = atlasreg.register(noise, fixed, backend="svf", options={**FAST_SVF, "regularisation": 100.0, "lr": 1.0})
    assert transform.jacobian_determinant().min() > 0


def test_svf_backend_aligns_and_is_deterministic(pair):
    moving, moving_labels, fixed, fixed_labels = pair
    first = atlasreg.register(moving, fixed, backend="svf", options=FAST_SVF)
    again = atlasreg.register(moving, fixed, backend="svf", options=FAST_SVF)
    assert first.field.tobytes() == again.field.tobytes() and np.array_equal(first.matrix, again.matrix)
    dice = atlasreg.evaluate(first.warp_labels(moving_labels), fixed_labels, "labels")["mean_dice"]
    assert dice > 0.8
    assert first.jacobian_determinant().min() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"shrink_factors": "1,2"}, "coarse to fine"),
        ({"shrink_factors": "4,0"}, ">= 1"),
        ({"iterations": "10,10"}, "one count"),
        ({"iterations": "10,-1,5"}, ">= 0"),
        ({"window": "4"}, "odd"),
        ({"regularisation": "-1"}, ">= 0"),
        ({"smoothing": "-0.5"}, ">= 0"),
        ({"lr": "0"}, "> 0"),
        ({"spacing": "-2"}, ">= 0"),
        ({"spacing": "0.1"}, ">= 0.25 mm"),
        ({"preset": "best"}, "choose one of"),
        ({"preset": "quality", "iterations": "10,10,10"}, "one count"),
        ({"similarity": "mi"}, "choose one of"),
        ({"device": "tpu"}, "choose one of"),
    ],
)
def test_svf_refuses_bad_options_before_any_work(pair, options, message):
    moving, _, fixed, _ = pair
    with pytest.raises(AtlasregError, match=message):
        atlasreg.register(moving, fixed, backend="svf", options=options)


def test_instance_optimisation_refines_the_velocity_not_the_weights():
    from atlasreg.engine.similarity import lncc
    from atlasreg.registry import get_backend

    backend = get_backend("voxelmorph")
    config = backend.config({"shape": [32, 32, 32], "crop": [32, 32, 32]})
    torch.manual_seed(0)
    network = backend.build_network(config).eval()
    fixed = torch.from_numpy(image_from_labels(blob_labels((32, 32, 32)), 1) / 40.0)[None, None]
    moving = torch.from_numpy(image_from_labels(blob_labels((32, 32, 32), shift=(2, -1, 1)), 2) / 40.0)[None, None]
    weights = {name: value.clone() for name, value in network.state_dict().items()}
    start = backend.predict_flow(network, moving, fixed, config)
    flow = backend.optimize(network, moving, fixed, config, steps=20, lr=0.2)
    assert flow.shape == start.shape
    assert all(torch.equal(weights[name], value) for name, value in network.state_dict().items())
    assert lncc(fixed, warp(moving, flow)) < lncc(fixed, warp(moving, start)) - 0.01


def test_cli_lists_svf_and_segments_with_it(capsys, tmp_path, pair):
    from atlasreg.cli import main

    def run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        return (code, *capsys.readouterr())

    code, out, _ = run("backends")
    assert code == 0 and "svf" in out
    moving, moving_labels, fixed, fixed_labels = pair
    paths = {name: atlasreg.save(v, tmp_path / f"{name}.nii.gz") for name, v in dict(m=moving, ms=moving_labels, f=fixed).items()}
    out_path = tmp_path / "seg.nii.gz"
    code, _, err = run("segment", paths["f"], "-a", paths["m"], paths["ms"], "-b", "svf", "-O", "iterations=30,20,5", "-o", out_path)
    assert code == 0, err
    segmentation = atlasreg.load(out_path, labels=True)
    assert atlasreg.evaluate(segmentation, fixed_labels, "labels")["mean_dice"] > 0.8
    code, _, err = run("segment", paths["f"], "-a", paths["m"], paths["ms"], "-b", "svf", "-O", "window=4", "-o", tmp_path / "bad.nii.gz")
    assert code != 0 and "odd" in err and "Traceback" not in err and not (tmp_path / "bad.nii.gz").exists()


def test_mind_descriptors_match_across_contrasts_not_across_positions():
    from atlasreg.engine.similarity import descriptor_distance, mind_ssc

    labels = blob_labels((32, 32, 32))
    # grey-level order 0 < 1 < 2 < 3 < 4 in one image, 0 < 3 < 1 < 4 < 2 in the other: no monotonic map relates them
    first = torch.from_numpy(relabelled(labels, {0: 0, 1: 40, 2: 80, 3: 120, 4: 160}, 1))[None, None]
    second = torch.from_numpy(relabelled(labels, {0: 0, 1: 120, 2: 40, 3: 160, 4: 80}, 2))[None, None]
    shifted = torch.from_numpy(relabelled(blob_labels((32, 32, 32), shift=(2, -1, 1)), {0: 0, 1: 120, 2: 40, 3: 160, 4: 80}, 2))[None, None]
    descriptors = mind_ssc(first)
    assert descriptors.shape == (1, 12, 32, 32, 32) and float(descriptors.max()) == pytest.approx(1.0)
    assert descriptor_distance(descriptors, mind_ssc(second)) < 0.7 * descriptor_distance(descriptors, mind_ssc(shifted))


def test_svf_with_mind_registers_a_contrast_no_monotonic_map_relates(pair):
    _, moving_labels, _, fixed_labels = pair
    moving = image(relabelled(moving_labels.array, {0: 0, 1: 40, 2: 80, 3: 120, 4: 160}, 1), moving_labels.affine)
    fixed = image(relabelled(fixed_labels.array, {0: 0, 1: 120, 2: 40, 3: 160, 4: 80}, 2), fixed_labels.affine)
    before = atlasreg.evaluate(moving_labels, fixed_labels, "labels")["mean_dice"]
    transform = atlasreg.register(moving, fixed, backend="svf", options={**FAST_SVF, "similarity": "mind"})
    assert atlasreg.evaluate(transform.warp_labels(moving_labels), fixed_labels, "labels")["mean_dice"] > max(0.8, before + 0.1)


def test_symmetric_svf_aligns(pair):
    moving, moving_labels, fixed, fixed_labels = pair
    transform = atlasreg.register(moving, fixed, backend="svf", options={**FAST_SVF, "symmetric": True})
    assert atlasreg.evaluate(transform.warp_labels(moving_labels), fixed_labels, "labels")["mean_dice"] > 0.8


@pytest.mark.parametrize("symmetric", [False, True])
def test_svf_round_trip_through_its_exact_inverse(symmetric):
    """Atlas -> target -> atlas on a smooth synthetic warp: labels come back (Dice >= 0.95 at 2 mm)
    and a point mapped there and back lands within 0.5 mm of where it started, on average."""
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    grid[:3, 3] = -39.0
    atlas_labels = atlasreg.Volume(blob_labels((40, 40, 40)), grid, is_labels=True)
    atlas = image(image_from_labels(atlas_labels.array, 1), grid)
    warp_mm = integrate(smooth_field((40, 40, 40), 2.0, seed=3), 7)[0].permute(1, 2, 3, 0).numpy() * 2.0  # 2 mm voxels
    truth = Transform.from_field(atlas, warp_mm)
    target = truth.warp(atlas)
    transform = atlasreg.register(atlas, target, backend="svf", options={**FAST_SVF, "symmetric": symmetric})
    inverse = transform.inverse(atlas)
    assert inverse.inversion.startswith("exact")
    back = inverse.warp_labels(transform.warp_labels(atlas_labels))
    assert atlasreg.evaluate(back, atlas_labels, "labels")["mean_dice"] >= 0.95
    brain = atlas_labels.array > 0
    error = np.linalg.norm(transform.map_points(inverse.mapped_points()) - inverse.grid_points(), axis=-1)
    assert error[brain].mean() <= 0.5, error[brain].mean()


def test_the_gpu_path_runs_on_the_cpu(pair, monkeypatch):
    """What runs on a GPU (the working-grid resampling, the field and the label warp in torch),
    forced onto the CPU: the same segmentation as the NumPy path."""
    import atlasreg.engine.grid as grid

    moving, moving_labels, fixed, fixed_labels = pair
    numpy_way = atlasreg.register(moving, fixed, backend="svf", options=FAST_SVF)
    monkeypatch.setattr(grid, "warping_device", lambda device: device)
    torch_way = atlasreg.register(moving, fixed, backend="svf", options=FAST_SVF)
    assert numpy_way.device is None and torch_way.device == "cpu"
    ours, theirs = torch_way.warp_labels(moving_labels), numpy_way.warp_labels(moving_labels)
    assert (ours.array == theirs.array).mean() >= 0.99
    assert atlasreg.evaluate(ours, fixed_labels, "labels")["mean_dice"] > 0.8


def test_engine_adam_takes_torch_adams_steps():
    """The engine's Adam (no torch.optim: no torch._dynamo import) steps exactly as torch.optim.Adam
    with ExponentialLR does: the same bytes after steps on two tensors of their own step sizes."""
    from atlasreg.engine.adam import Adam

    start = [torch.linspace(-2.0, 3.0, 24).view(2, 3, 4), torch.tensor([0.5, -1.5], dtype=torch.float64)]
    ours, theirs = [p.clone().requires_grad_(True) for p in start], [p.clone().requires_grad_(True) for p in start]
    mine = Adam([(ours[0], 0.2), (ours[1], 0.05)])
    reference = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.2}, {"params": [theirs[1]], "lr": 0.05}])
    schedule = torch.optim.lr_scheduler.ExponentialLR(reference, 0.8)
    for _ in range(7):
        for params, optimiser in ((ours, mine), (theirs, reference)):
            optimiser.zero_grad()
            ((params[0] ** 4).sum() + (params[1] - 1.0).abs().sum() * params[0].mean()).backward()
            optimiser.step()
        mine.decay(0.8)
        schedule.step()
    assert not torch.equal(ours[0], start[0])
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_matched_background_brightens_an_anticorrelated_targets_background_only():
    from atlasreg.engine.grid import matched_background

    labels = blob_labels((32, 32, 32))
    moving = relabelled(labels, T1_LIKE, 1)
    fixed = relabelled(labels, T2_LIKE, 2)
    matched = matched_background(moving, fixed)
    outside, inside = ndimage.binary_erosion(labels == 0, iterations=2), ndimage.binary_erosion(labels > 0, iterations=3)
    assert matched[outside].min() >= np.percentile(fixed[labels > 0], 95)  # as bright as its brightest tissue
    assert np.array_equal(matched[inside], fixed[inside])
    assert matched.dtype == fixed.dtype
    same_contrast = relabelled(labels, T1_LIKE, 3)
    assert matched_background(moving, same_contrast) is same_contrast  # a relation that rises: untouched


def test_covering_grid_holds_the_head_and_leaves_out_a_noisy_background(affine):
    """A brain in a field of view three times its width, the background noisy (not zero, with two
    bright specks near its corners): svf's grid holds every voxel of the head with its margin, and
    not the field of view's edges."""
    from atlasreg.engine.grid import covering_grid
    from atlasreg.spatial import apply_matrix

    labels = np.zeros((60, 60, 60), np.int32)
    labels[10:30, 14:40, 20:36] = blob_labels((20, 26, 16))
    array = image_from_labels(labels, 1) + 20.0  # noise about 20, the darkest tissue 60
    array[2, 2, 2] = array[57, 55, 56] = 150.0
    grid = covering_grid(Volume(array, affine, is_labels=False), 2.0, margin=3)
    head = apply_matrix(np.linalg.inv(grid.affine) @ affine, np.argwhere(labels > 0).astype(float))
    assert head.min() >= 3 - 1e-6 and (np.array(grid.shape) - 1 - head.max(0)).min() >= 3 - 1e-6
    assert np.allclose(head.min(0), np.array(grid.shape) - 1 - head.max(0), atol=1.0)  # centred on the head's box
    assert np.prod(grid.shape) < 0.25 * array.size


def test_svf_holds_on_a_t2_like_target_with_a_t1_atlas():
    """Without matched_background the T2-like target scored 0.14 mean aseg Dice here (T1: 0.64)."""
    from atlasreg.synth import synthesize

    atlas_labels, target_labels = (brain_only(labels) for labels in real_labelmaps(2))
    atlas = synthesize(atlas_labels, seed=0)
    dice = {}
    for contrast in ("t1", "t2"):
        target = synthesize(target_labels, seed=1, contrast=contrast)
        transform = atlasreg.register(atlas, target, backend="svf", options={"spacing": 4.0, "iterations": (30, 20, 5)})
        dice[contrast] = atlasreg.evaluate(transform.warp_labels(atlas_labels), target_labels, "aseg", allow_label_mismatch=True)["mean_dice"]
    assert dice["t1"] > 0.55
    assert dice["t2"] > dice["t1"] - 0.1


def test_matched_background_on_the_fixed_grid_follows_the_affine_stage(affine):
    from atlasreg.engine.grid import matched_background_on

    labels = blob_labels((32, 32, 32))
    shifted = np.roll(labels, 3, axis=0)  # the atlas 3 voxels off: the matrix brings it back
    moving = Volume(relabelled(shifted, T1_LIKE, 1), affine, is_labels=False)
    fixed = Volume(relabelled(labels, T2_LIKE, 2), affine, is_labels=False)
    matrix = np.eye(4)
    matrix[:3, 3] = affine[:3, :3] @ np.array([3.0, 0.0, 0.0])  # fixed world -> moving world
    matched = matched_background_on(moving, fixed, matrix)
    outside = ndimage.binary_erosion(labels == 0, iterations=2)
    assert matched.same_grid(fixed) and not matched.is_labels
    assert matched.array[outside].min() >= np.percentile(fixed.array[labels > 0], 95)
    same = Volume(relabelled(labels, T1_LIKE, 3), affine, is_labels=False)
    assert matched_background_on(moving, same, matrix) is same
