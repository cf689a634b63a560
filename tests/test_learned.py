"""The learned-backend machinery: model files, training loop, inference, loss switches."""

import json
import os
import time
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import atlasreg  # noqa: E402
from atlasreg import AtlasregError  # noqa: E402
from atlasreg.engine.grid import align_pair, working_grid  # noqa: E402
from atlasreg.models import load_model_file, save_model  # noqa: E402
from atlasreg.recipe import TrainingPair, label_overlap  # noqa: E402
from atlasreg.registry import get_backend  # noqa: E402
from atlasreg.train import TrainSettings, train  # noqa: E402
from atlasreg.transform import Transform  # noqa: E402
from atlasreg.volume import foreground  # noqa: E402
from atlasreg.volume import label_map  # noqa: E402
from conftest import blob_labels, brain_only, real_labelmaps, run_cli  # noqa: E402

TINY = {"shape": [32, 32, 32], "crop": [32, 32, 32]}
TINY_NETS = {
    "contrastive": {**TINY, "stem_channels": 4, "unet_channels": [8, 8, 8], "head_channels": 4, "proj_dim": 8, "points": 16},
    "voxelmorph": {**TINY, "enc_channels": [4, 8, 8, 8], "dec_channels": [8, 8, 8, 8, 8, 4, 4]},
}


@pytest.fixture
def files(tmp_path, pair):
    moving, moving_labels, fixed, fixed_labels = pair
    names = dict(atlas=moving, atlas_seg=moving_labels, subject=fixed, subject_seg=fixed_labels)
    return {name: atlasreg.save(volume, tmp_path / f"{name}.nii.gz") for name, volume in names.items()}


def test_learned_backends_are_listed_on_cpu():
    infos = {info.name: info for info in atlasreg.backends()}
    for name in ("contrastive", "voxelmorph"):
        assert infos[name].available, infos[name].reason
        assert infos[name].kind == "learned" and "cpu" in infos[name].devices


def test_model_file_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "backend": "voxelmorph", "weights": {}, "config": {}, "payload": TrainSettings(tmp_path)}, path)
    with pytest.raises(AtlasregError, match="refused"):
        load_model_file(path)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(AtlasregError, match="not an atlasreg model"):
        load_model_file(tmp_path / "junk.pt")


@pytest.mark.parametrize("name", ["contrastive", "voxelmorph"])
def test_save_load_round_trip_reproduces_outputs_exactly(tmp_path, name, pair):
    backend = get_backend(name)
    config = backend.config(TINY_NETS[name])
    torch.manual_seed(0)
    network = backend.build_network(config).eval()
    moving, fixed = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    before = backend.predict_flow(network, moving, fixed, config)
    path = save_model(tmp_path / "m.pt", name, config, network)
    loaded, loaded_config = backend.load_network(path, "cpu")
    assert loaded_config == config
    assert torch.equal(backend.predict_flow(loaded, moving, fixed, config), before)


def test_switching_a_loss_off_removes_it_from_the_gradient():
    backend = get_backend("contrastive")
    config = backend.config(TINY_NETS["contrastive"])
    torch.manual_seed(0)
    network = backend.build_network(config).train()
    moving, fixed = torch.randn(2, 1, 32, 32, 32), torch.randn(2, 1, 32, 32, 32)

    def grads(losses):
        network.zero_grad()
        _, terms = backend.loss_terms(network, TrainingPair(moving, fixed), config, sample=False)
        backend.total_loss(terms, {**config, "losses": losses}).backward()
        return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in network.named_parameters()}

    head = [n for n in grads(["contrast"]) if "projection" in n]
    assert head, "the projection head's parameters should be named *projection*"
    with_contrast = grads(["recon", "smooth", "contrast"])
    without = grads(["recon", "smooth"])
    assert all(with_contrast[n] > 0 for n in head)
    assert all(without[n] == 0 for n in head)  # only the contrastive term reaches the projection head
    with pytest.raises(AtlasregError, match="no loss term"):
        backend.total_loss({"recon": torch.tensor(1.0)}, {**config, "losses": []})


def test_train_resume_and_register(tmp_path, files, pair):
    settings = TrainSettings(
        images=[files["subject"]],
        atlas=(files["atlas"], files["atlas_seg"]),
        output=tmp_path / "vm.pt",
        steps=2,
        batch_size=1,
        progress=False,
        val_every=1,
        val_images=[files["subject"]],
        val_labels=[files["subject_seg"]],
        val_protocol="labels",
        config=TINY_NETS["voxelmorph"],
    )
    train("voxelmorph", settings)
    state = load_model_file(tmp_path / "vm.pt")
    assert state["step"] == 2 and state["config"]["shape"] == [32, 32, 32]
    records = [json.loads(line) for line in (tmp_path / "vm.pt.log.jsonl").read_text().splitlines()]
    assert {"sim", "smooth", "loss"} <= set(records[0]) and any("val_mean_dice" in r for r in records)
    assert len(list((tmp_path / "vm.pt.cache").glob("affine-*.json"))) == 1  # one pair (training = validation here), cached once
    settings.steps, settings.resume = 3, tmp_path / "vm.pt"
    train("voxelmorph", settings)
    assert load_model_file(tmp_path / "vm.pt")["step"] == 3
    moving, moving_labels, fixed, _ = pair
    transform = atlasreg.register(
        moving, fixed, backend="voxelmorph", options={"model": str(tmp_path / "vm.pt"), "device": "cpu", "optimize_steps": 1}
    )
    assert transform.shape == fixed.shape and transform.field is not None
    assert set(np.unique(transform.warp_labels(moving_labels).array)) <= set(np.unique(moving_labels.array))
    fields = [atlasreg.register(moving, fixed, backend="voxelmorph", options={
        "model": str(tmp_path / "vm.pt"), "device": "cpu", "optimize_steps": 4, "optimize_similarity": similarity}).field
        for similarity in ("lncc", "mind")]
    assert not np.array_equal(*fields)  # the option reaches instance optimisation


def test_affine_cache_follows_file_contents(tmp_path, files, monkeypatch):
    """Copied images hit the cache: the affine stage does not run again."""
    from atlasreg import train as train_module

    cache = tmp_path / "cache"
    first = train_module.cached_align_pair(files["atlas"], files["subject"], 2.0, (32, 32, 32), cache)
    copies = tmp_path / "copies"
    copies.mkdir()
    for key in ("atlas", "subject"):
        shutil.copy(files[key], copies / files[key].name)

    def refuse(*args, **kwargs):
        raise AssertionError("affine stage recomputed")

    monkeypatch.setattr(train_module, "align_pair", lambda *a, matrix=None, **k: refuse() if matrix is None else align_pair(*a, matrix=matrix, **k))
    again = train_module.cached_align_pair(copies / files["atlas"].name, copies / files["subject"].name, 2.0, (32, 32, 32), cache)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    np.testing.assert_array_equal(first.moving, again.moving)


def test_learned_register_refuses_a_model_that_is_neither_name_nor_file(pair):
    moving, _, fixed, _ = pair
    with pytest.raises(AtlasregError, match="neither a declared model name"):
        atlasreg.register(moving, fixed, backend="contrastive", options={"model": "no-such-model"})


def test_aligned_pair_is_on_the_working_grid(pair):
    moving, moving_labels, fixed, _ = pair
    aligned = align_pair(moving, fixed, working_grid(fixed, 2.0, (32, 32, 32)), moving_labels, matrix=np.eye(4))
    assert aligned.moving.shape == aligned.fixed.shape == (32, 32, 32)
    mask = foreground(Transform.identity(aligned.grid).warp(fixed).array)
    assert abs(aligned.fixed[mask].mean()) < 1e-4  # z-scored with the brain's statistics
    assert set(np.unique(aligned.moving_labels)) <= set(np.unique(moving_labels.array))


def test_cli_train_then_segment_with_model(tmp_path, files, capsys):
    def run(*args):
        code, _, err = run_cli(capsys, *args)
        return code, err

    model = tmp_path / "c.pt"
    tiny = TINY_NETS["contrastive"]
    code, err = run("train", "-b", "contrastive", "--images", files["subject"], "--atlas", files["atlas"], files["atlas_seg"],
               "--steps", 1, "--batch-size", 1, "--shape", "32,32,32", "--crop", "32,32,32", "--losses", "recon,smooth",
               "--weight", "smooth=0.5", "-C", "stem_channels=4", "-C", f"unet_channels={json.dumps(tiny['unet_channels'])}",
               "-C", "head_channels=4", "-o", model)
    assert code == 0, err
    config = load_model_file(model)["config"]
    assert config["losses"] == ["recon", "smooth"] and config["weights"]["smooth"] == 0.5 and config["weights"]["contrast"] == 0.05
    out = tmp_path / "seg.nii.gz"
    code, err = run("segment", files["subject"], "-a", files["atlas"], files["atlas_seg"], "-b", "contrastive", "--model", model, "-o", out)
    assert code == 0, err
    assert atlasreg.load(out, labels=True).same_grid(atlasreg.load(files["subject"]))
    code, err = run("segment", files["subject"], "-a", files["atlas"], files["atlas_seg"], "-b", "affine", "--model", model, "-o", tmp_path / "x.nii.gz")
    assert code == 1 and "unknown option model" in err


def test_train_on_random_subject_pairs_without_atlas(tmp_path, files):
    settings = TrainSettings(
        images=[files["subject"], files["atlas"]],
        output=tmp_path / "pairs.pt",
        steps=2,
        batch_size=2,
        progress=False,
        config=TINY_NETS["contrastive"],
    )
    train("contrastive", settings)
    records = [json.loads(line) for line in (tmp_path / "pairs.pt.log.jsonl").read_text().splitlines()]
    assert [r["pairs"] for r in records if "loss" in r] == [2, 2]
    assert all(np.isfinite(r["contrast"]) for r in records if "loss" in r)
    with pytest.raises(AtlasregError, match="needs --atlas"):
        train("contrastive", TrainSettings(images=[files["subject"], files["atlas"]], output=tmp_path / "v.pt", steps=1,
                                           progress=False, val_images=[files["subject"]], val_labels=[files["subject_seg"]],
                                           config=TINY_NETS["contrastive"]))
    with pytest.raises(AtlasregError, match="does not learn"):
        train("affine", settings)


def test_transform_from_flow_resamples_the_field_like_linear_interpolation(pair):
    """The torch resampling of the network's field onto an oblique target grid = SciPy's linear one."""
    from scipy import ndimage

    from atlasreg.engine.grid import AlignedPair, transform_from_flow
    from atlasreg.spatial import apply_matrix, voxel_grid

    _, _, fixed, _ = pair
    grid = working_grid(fixed, 2.0, (24, 28, 20))
    flow = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 2, (3, 24, 28, 20)), (0, 2, 2, 2)).astype(np.float32)
    matrix = np.eye(4)
    matrix[:3, 3] = [1.0, -2.0, 0.5]
    transform = transform_from_flow(torch.from_numpy(flow), AlignedPair(None, None, grid, matrix), fixed)
    coords = np.moveaxis(apply_matrix(np.linalg.inv(grid.affine) @ fixed.affine, voxel_grid(fixed.shape)), -1, 0)
    expected = np.stack([ndimage.map_coordinates(flow[c] * 2.0, coords, order=1, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(transform.field, expected, atol=1e-4)
    np.testing.assert_array_equal(transform.matrix, matrix)


@pytest.mark.parametrize("name", ["contrastive", "voxelmorph"])
def test_segment_loads_the_model_once_and_inference_computes_no_loss(tmp_path, name, pair, monkeypatch):
    import atlasreg.learned as learned

    backend = get_backend(name)
    config = backend.config(TINY_NETS[name])
    path = save_model(tmp_path / "m.pt", name, config, backend.build_network(config))
    reads = []
    real_load = learned.load_model_file
    monkeypatch.setattr(learned, "load_model_file", lambda p: reads.append(p) or real_load(p))

    def no_loss(*args, **kwargs):
        raise AssertionError("inference computed a loss term")

    monkeypatch.setattr(type(backend), "loss_terms", no_loss)
    moving, moving_labels, fixed, _ = pair
    options = {"model": str(path), "device": "cpu"}
    atlasreg.segment(fixed, [(moving, moving_labels)] * 3, backend=name, backend_options=options)
    assert len(reads) == 1
    path.write_bytes(path.read_bytes())  # a rewritten file (new mtime) is read again
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    atlasreg.segment(fixed, [(moving, moving_labels)], backend=name, backend_options=options)
    assert len(reads) == 2


def test_registry_builds_each_method_once():
    assert get_backend("affine") is get_backend("affine")


def test_augmentation_rotation_is_rigid_on_a_non_cubic_grid():
    """A centred ball stays a ball (in normalised grid_sample coordinates it would turn into an ellipsoid)."""
    from atlasreg.train import augment

    shape = (24, 40, 28)
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij"))
    ball = torch.from_numpy((np.sqrt((grid**2).sum(0)) < 7).astype(np.float32))[None, None]
    for seed in range(4):
        out = augment(torch.cat([ball, ball]), shape, np.random.default_rng(seed), max_degrees=30.0)
        assert torch.equal(out[0], out[1])  # one draw for both images of the pair
        points = np.argwhere(out[0, 0].numpy() > 0.5).astype(float)
        spread = np.linalg.eigvalsh(np.cov(points.T))
        assert spread.max() / spread.min() < 1.1
        assert abs(len(points) - ball.sum().item()) / ball.sum().item() < 0.05


def test_label_overlap_scores_the_warped_moving_labels():
    """0 for a flow that carries the moving labels exactly onto the fixed ones, the background left
    out, and a gradient that reaches the flow."""
    labels = torch.nn.functional.pad(torch.from_numpy(blob_labels((12, 18, 14))).long(), (0, 0, 0, 0, 2, 2))[None, None]
    shifted = torch.roll(labels, 2, dims=2)  # fixed(p) = moving(p - 2 e_x); two background slices each side
    flow = torch.zeros(1, 3, 16, 18, 14, requires_grad=True)
    before = label_overlap(labels, shifted, flow)
    assert 0.1 < before.item() < 1.0
    before.backward()
    assert flow.grad.abs().sum() > 0
    back = torch.zeros(1, 3, 16, 18, 14)
    back[:, 0] = -2.0  # warped(p) = moving(p - 2 e_x)
    assert label_overlap(labels, shifted, back).item() == pytest.approx(0.0, abs=1e-6)
    background = torch.zeros_like(labels)
    assert label_overlap(background, background, back).item() == 0.0  # no structure: nothing to score


@pytest.fixture
def label_maps(tmp_path, affine):
    paths = []
    for i, shift in enumerate([(0, 0, 0), (2, -1, 1)]):
        paths.append(atlasreg.save(label_map(blob_labels((36, 36, 36), shift=shift), affine), tmp_path / f"map{i}.nii.gz"))
    return paths


def test_synth_training_trains_on_label_overlap_and_the_cross_contrast_term(tmp_path, label_maps):
    config = {**TINY_NETS["contrastive"], "contrast": "cross"}
    settings = TrainSettings(synth=label_maps, output=tmp_path / "c.pt", steps=2, batch_size=2, progress=False, config=config,
                             cache_dir=tmp_path / "cache")
    train("contrastive", settings)
    records = [json.loads(line) for line in (tmp_path / "c.pt.log.jsonl").read_text().splitlines()]
    assert all({"dice", "smooth", "contrast"} <= set(r) and "recon" not in r for r in records)
    assert all(np.isfinite(r["contrast"]) and 0 < r["dice"] < 1 for r in records)
    # --init: a new run from the weights (the config and its overrides carried), at step 0 with a fresh schedule
    tuned = TrainSettings(synth=label_maps, output=tmp_path / "t.pt", steps=1, batch_size=1, progress=False, init=tmp_path / "c.pt",
                          config={"weights": {"contrast": 0.2}}, cache_dir=tmp_path / "cache")
    train("contrastive", tuned)
    state = load_model_file(tmp_path / "t.pt")
    assert state["step"] == 1 and state["training"]["init"] == str(tmp_path / "c.pt")
    assert state["config"]["contrast"] == "cross" and state["config"]["weights"] == {"recon": 1.0, "dice": 1.0, "smooth": 0.01, "contrast": 0.2}


def test_synth_training_validates_on_images_with_an_atlas(tmp_path, files, label_maps):
    settings = TrainSettings(synth=label_maps, output=tmp_path / "v.pt", steps=1, batch_size=1, progress=False,
                             config=TINY_NETS["voxelmorph"], cache_dir=tmp_path / "cache", atlas=(files["atlas"], files["atlas_seg"]),
                             val_images=[files["subject"]], val_labels=[files["subject_seg"]], val_protocol="labels")
    train("voxelmorph", settings)
    records = [json.loads(line) for line in (tmp_path / "v.pt.log.jsonl").read_text().splitlines()]
    assert 0 < records[-1]["val_mean_dice"] <= 1
    settings.val_images = settings.val_labels = []
    with pytest.raises(AtlasregError, match="only for validation"):
        train("voxelmorph", settings)


def test_training_refuses_a_data_term_its_pairs_cannot_feed(tmp_path, files, label_maps):
    old_recipe = {**TINY_NETS["voxelmorph"], "losses": ["sim", "smooth"]}  # a model file from before label overlap
    with pytest.raises(AtlasregError, match="give --losses dice,smooth"):
        train("voxelmorph", TrainSettings(synth=label_maps, output=tmp_path / "v.pt", steps=1, progress=False, config=old_recipe))
    with pytest.raises(AtlasregError, match="needs two renderings"):
        train("contrastive", TrainSettings(images=[files["subject"], files["atlas"]], output=tmp_path / "c.pt", steps=1,
                                           progress=False, config={**TINY_NETS["contrastive"], "contrast": "cross"}))
    with pytest.raises(AtlasregError, match="one of them"):
        train("voxelmorph", TrainSettings(synth=label_maps, output=tmp_path / "v.pt", steps=1, progress=False,
                                          resume=tmp_path / "a.pt", init=tmp_path / "b.pt"))


@pytest.mark.parametrize("name", ["contrastive", "voxelmorph"])
def test_a_model_file_that_does_not_fit_its_config_names_the_architecture(tmp_path, name):
    backend = get_backend(name)
    config = backend.config(TINY_NETS[name])
    path = save_model(tmp_path / "m.pt", name, {**config, "head_channels": 6} if name == "contrastive" else
                      {**config, "dec_channels": [8, 8, 8, 8, 8, 4, 6]}, backend.build_network(config))
    with pytest.raises(AtlasregError, match="do not fit") as caught:
        backend.load_network(path, "cpu")
    assert all(f"{key}=" in str(caught.value) for key in backend.architecture_keys)


def test_prefetching_changes_no_batch(tmp_path):
    """The batches of every step, with the next one synthesized in a background thread or not."""
    from atlasreg.train import _batches

    class Source:
        def batch(self, seeds, device):
            return torch.tensor(seeds)

    def all_batches(prefetch: bool):
        settings = TrainSettings(output=tmp_path / "m.pt", steps=5, batch_size=4, seed=3, prefetch=prefetch)
        return [b.tolist() for b in _batches(Source(), settings, rank=1, world=2, device="cpu", step=2)]

    assert all_batches(True) == all_batches(False)
    assert len(all_batches(True)) == 3 and all(len(b) == 2 for b in all_batches(True))  # steps 2-4, this rank's 2 pairs


class _FixedVelocity(torch.nn.Module):
    """A stand-in network that predicts one given velocity whatever the pair."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity

    def forward(self, moving, fixed):
        return {"velocity": self.velocity}


def test_instance_optimisation_starts_from_zero_where_the_network_fits_worse_than_nothing():
    from atlasreg.engine import displacement, optimize_velocity

    backend = get_backend("voxelmorph")
    config = backend.config(TINY_NETS["voxelmorph"])
    labels = torch.from_numpy(blob_labels((24, 24, 24))).float()[None, None]
    moving, fixed = labels, torch.roll(labels, 1, dims=2)
    from_zero = displacement(optimize_velocity(moving, fixed, None, levels=(2, 1), iterations=(3, 1), lr=0.2), (24, 24, 24))
    wrong = torch.zeros(1, 3, 24, 24, 24)
    wrong[:, 1] = 3.0  # a sideways shift: worse than none
    assert torch.equal(backend.optimize(_FixedVelocity(wrong), moving, fixed, config, steps=4, lr=0.2), from_zero)
    right = torch.zeros(1, 3, 24, 24, 24)
    right[:, 0] = -1.0  # warped(p) = moving(p - e_x) = fixed(p): better than none, kept as the start
    assert not torch.equal(backend.optimize(_FixedVelocity(right), moving, fixed, config, steps=4, lr=0.2), from_zero)


def test_instance_optimisation_with_mind_holds_on_a_t2_like_target_with_a_t1_atlas():
    """From a zero start (a network that predicts nothing), 40 steps of instance optimisation on
    MIND-SSC descriptors carry a T1 atlas's labels onto a T2-like target well beyond the affine
    stage (measured here: affine 0.566 mean aseg Dice, mind 0.616; lncc 0.646)."""
    from atlasreg.engine.grid import covering_grid, transform_from_flow
    from atlasreg.synth import synthesize

    backend = get_backend("voxelmorph")
    config = backend.config(TINY_NETS["voxelmorph"])
    atlas_labels, target_labels = (brain_only(labels) for labels in real_labelmaps(2))
    atlas, target = synthesize(atlas_labels, seed=0), synthesize(target_labels, seed=1, contrast="t2")
    pair = align_pair(atlas, target, covering_grid(target, 4.0))
    moving, fixed = (torch.from_numpy(array)[None, None] for array in (pair.moving, pair.fixed))
    nothing = _FixedVelocity(torch.zeros(1, 3, *moving.shape[2:]))
    flow = backend.optimize(nothing, moving, fixed, config, steps=40, lr=0.2, similarity="mind")

    def dice(transform: Transform) -> float:
        return atlasreg.evaluate(transform.warp_labels(atlas_labels), target_labels, "aseg", allow_label_mismatch=True)["mean_dice"]

    assert dice(transform_from_flow(flow[0], pair, target)) > dice(Transform.from_matrix(target, pair.matrix)) + 0.03


def test_learned_register_runs_the_affine_stage_on_its_device(pair, monkeypatch):
    import atlasreg.learned as learned

    seen = []
    real = learned.align_pair
    monkeypatch.setattr(learned, "align_pair", lambda *args, **kwargs: seen.append(kwargs.get("device")) or real(*args, **kwargs))
    moving, _, fixed, _ = pair
    atlasreg.register(moving, fixed, backend="voxelmorph", options={"device": "cpu"})
    assert seen == ["cpu"]
