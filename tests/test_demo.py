"""`atlasreg demo` on a tiny configuration (one target, affine, 6 mm), and `atlasreg synth`."""

import json
import socket

import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume

from conftest import blob_labels, run_cli as run


def _refuse(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(socket, "socket", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)


def test_demo_writes_table_and_figure(offline, capsys, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "-o", out_dir, "--targets", "1", "--backends", "affine", "--spacing", "6")
    assert code == 0, err
    assert "| **mean over DK labels** |" in out and "| hippocampus |" in out and "seconds per target" in out
    assert (out_dir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / "results.json").read_text())
    assert results["atlas"] == "9861" and results["targets"] == ["10021"]
    affine = results["backends"]["affine"]
    assert 0.1 < affine["mean_dice"] <= 1.0 and affine["seconds_per_target"] > 0
    assert set(affine["region_dice"]) >= {"frontal", "thalamus", "hippocampus"}
    assert (out_dir / "results.md").read_text().strip() in out


def test_demo_pieces(offline):
    from atlasreg import demo

    image, labels = demo.donor_subject("10021", spacing=6.0)
    assert image.same_grid(labels) and not image.is_labels
    from atlasreg.atlases import dk_labels

    assert set(labels.labels().tolist()) <= set(dk_labels()) - {16}  # FreeSurfer codes; no brain stem in the donors
    scored = demo.score(labels, labels)
    assert scored["mean_dice"] == 1.0 and scored["region_dice"]["putamen"] == 1.0

    assert demo.available_methods() == list(demo.METHODS)  # all run here, in table order


def test_demo_leaves_out_an_unavailable_backend(monkeypatch):
    from atlasreg import demo
    from atlasreg_plugins.ants.backend import AntsBackend

    monkeypatch.setattr(AntsBackend, "requires", ("no_such_module_xyz",))
    monkeypatch.setattr(AntsBackend, "install", "pip install 'atlasreg[ants]'")
    assert "ants" in demo.METHODS and demo.available_methods() == [m for m in demo.METHODS if m != "ants"]
    assert list(demo.unavailable_methods()) == ["ants"]
    results = {"atlas": "a", "targets": ["t"], "spacing_mm": 2.0, "not_run": demo.unavailable_methods(),
               "backends": {"affine": {"mean_dice": 0.5, "seconds_per_target": 1.0, "region_dice": {"frontal": 0.5}}}}
    assert demo.format_table(results).splitlines()[-1] == (
        "Not run here: ants: needs the Python package providing 'no_such_module_xyz' (not installed): pip install 'atlasreg[ants]'")


def test_demo_refuses_bad_arguments(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "-o", tmp_path, "--backends", "nope")
    assert code == 1 and err.count("\n") == 1 and "choose from affine, simpleitk, ants" in err
    code, _, err = run(capsys, "demo", "-o", tmp_path, "--targets", "9", "--backends", "affine")
    assert code == 1 and "--targets must be 1 to 5" in err


@pytest.fixture
def label_file(tmp_path, affine):
    labels = blob_labels().copy()
    labels[labels == 1] = 3
    labels[labels == 4] = 17
    labels[0, 0, 0] = 120  # non-brain
    return atlasreg.save(Volume(labels, affine, is_labels=True), tmp_path / "labels.nii.gz")


def test_synth_is_deterministic_and_keeps_the_affine(capsys, tmp_path, label_file, affine):
    paths = [tmp_path / f"img{i}.nii.gz" for i in range(3)]
    for path, seed in zip(paths, (7, 7, 8)):
        code, _, err = run(capsys, "synth", label_file, "-o", path, "--seed", seed)
        assert code == 0, err
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    image = atlasreg.load(paths[0])
    assert np.allclose(image.affine, affine, atol=1e-5) and image.shape == blob_labels().shape
    assert image.array[0, 0, 0] < 20  # skull-stripped by default: the non-brain voxel is background


def test_synth_options_and_errors(capsys, tmp_path, label_file):
    stripped, kept = tmp_path / "s.nii.gz", tmp_path / "k.nii.gz"
    assert run(capsys, "synth", label_file, "-o", stripped, "--contrast", "random")[0] == 0
    assert run(capsys, "synth", label_file, "-o", kept, "--contrast", "random", "--no-skull-strip")[0] == 0
    assert not np.array_equal(atlasreg.load(stripped).array, atlasreg.load(kept).array)
    code, _, err = run(capsys, "synth", label_file, "-o", tmp_path / "x.png")
    assert code == 1 and "must end in .nii" in err
    image = atlasreg.save(Volume(np.full((4, 4, 4), 0.5, np.float32), np.eye(4), is_labels=False), tmp_path / "img.nii.gz")
    code, _, err = run(capsys, "synth", image, "-o", tmp_path / "y.nii.gz")
    assert code == 1 and "label map" in err
