"""Same inputs, options and seed give the same bytes on CPU: every first-party backend, training,
and `atlasreg compare` (issue 10, case 16: three identical `-b affine` runs used to differ)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume

from conftest import blob_labels, image_from_labels, run_cli

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TINY = {"shape": [32, 32, 32], "crop": [32, 32, 32]}
TINY_NETS = {
    "contrastive": {**TINY, "stem_channels": 4, "unet_channels": [8, 8, 8], "head_channels": 4, "proj_dim": 8, "points": 16},
    "voxelmorph": {**TINY, "enc_channels": [4, 8, 8, 8], "dec_channels": [8, 8, 8, 8, 8, 4, 4]},
}


@pytest.fixture
def files(tmp_path):
    """A moving image with labels and a fixed image (the brain shifted), 32x36x30 at 2 mm."""
    moving, fixed = blob_labels(), blob_labels(shift=(2, -1, 1))
    return {
        "mov": atlasreg.save(Volume(image_from_labels(moving, 1), AFFINE, is_labels=False), tmp_path / "mov.nii.gz"),
        "mov_seg": atlasreg.save(Volume(moving, AFFINE, is_labels=True), tmp_path / "mov_seg.nii.gz"),
        "fix": atlasreg.save(Volume(image_from_labels(fixed, 2), AFFINE, is_labels=False), tmp_path / "fix.nii.gz"),
        "fix_seg": atlasreg.save(Volume(fixed, AFFINE, is_labels=True), tmp_path / "fix_seg.nii.gz"),
    }


@pytest.fixture
def two_sitk_threads():
    """SimpleITK's default at two threads, where repeated affine and demons runs differed: its
    work must run single-threaded all the same."""
    sitk = pytest.importorskip("SimpleITK")
    previous = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(2)
    yield
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(previous)


def register_twice(run, files, tmp_path, *options):
    """`atlasreg register` twice with the same arguments; the bytes of both outputs of each run."""
    outputs = []
    for attempt in range(2):
        warped, field = tmp_path / f"warped{attempt}.nii.gz", tmp_path / f"field{attempt}.nii.gz"
        code, err = run("register", files["mov"], files["fix"], *options, "-o", warped, "--transform-out", field)
        assert code == 0, err
        outputs.append((warped.read_bytes(), field.read_bytes()))
    return outputs


@pytest.mark.parametrize(
    "options",
    [
        ("-b", "affine"),
        ("-b", "simpleitk", "-O", "iterations=20,10,5"),
        ("-b", "simpleitk", "-O", "method=bspline", "-O", "iterations=5,2,1"),
    ],
    ids=["affine", "simpleitk-demons", "simpleitk-bspline"],
)
def test_simpleitk_backends_give_the_same_bytes_twice(capsys, files, tmp_path, options, two_sitk_threads):
    first, second = register_twice(lambda *args: run_cli(capsys, *args)[::2], files, tmp_path, *options)
    assert first == second


@pytest.mark.parametrize("fusion", ["majority", "weighted", "staple"])
def test_fusion_gives_the_same_labels_twice(pair, fusion, two_sitk_threads):
    from atlasreg.registry import get_fusion

    moving, moving_labels, fixed, fixed_labels = pair
    images, labels = [moving, fixed, moving], [moving_labels, fixed_labels, fixed_labels]
    method = get_fusion(fusion)
    runs = [method.fuse(fixed, images, labels, **method.resolve_options({})).array.tobytes() for _ in range(2)]
    assert method.deterministic and runs[0] == runs[1]


ANTS_TWICE = """
import hashlib, sys
import atlasreg
moving, moving_labels, fixed, fixed_labels = sys.argv[1:5]
for _ in range(2):
    t = atlasreg.register(moving, fixed, backend="ants", options={"preset": "fast", "iterations": (20, 10, 0)})
    print(hashlib.sha256(t.matrix.tobytes() + t.field.tobytes()).hexdigest())
    seg = atlasreg.segment(fixed, [(moving, moving_labels), (fixed, fixed_labels)], backend="affine", fusion="jlf")
    print(hashlib.sha256(seg.array.tobytes()).hexdigest())
"""


def test_ants_and_jlf_give_the_same_bytes_twice(files, monkeypatch, capsys):
    """In a fresh interpreter, as a user runs it (ANTs' ITK reads its thread count once per process)."""
    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    args = [files[k] for k in ("mov", "mov_seg", "fix", "fix_seg")]
    done = subprocess.run([sys.executable, "-c", ANTS_TWICE, *map(str, args)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    ants_1, jlf_1, ants_2, jlf_2 = done.stdout.split()
    assert ants_1 == ants_2 and jlf_1 == jlf_2
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")  # more threads asked for: faster, not reproducible
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0 and "not reproducible" in next(line for line in out.splitlines() if line.startswith("ants "))


def test_backends_listing_says_which_are_deterministic(capsys):
    code, out, _ = run_cli(capsys, "backends", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and all(rows[name]["deterministic"] for name in ("affine", "simpleitk", "contrastive", "voxelmorph"))


@pytest.mark.parametrize("name", ["contrastive", "voxelmorph"])
def test_learned_training_and_inference_give_the_same_bytes_twice(capsys, files, tmp_path, name):
    import torch

    from atlasreg.models import load_model_file

    models = []
    for attempt in range(2):
        model = tmp_path / f"{name}{attempt}.pt"
        config = [arg for key, value in TINY_NETS[name].items() for arg in ("-C", f"{key}={json.dumps(value)}")]
        code, _, err = run_cli(capsys, "train", "-b", name, "--images", files["fix"], "--atlas", files["mov"], files["mov_seg"],
                               "--steps", 1, "--batch-size", 1, "--seed", 3, *config, "-o", model)
        assert code == 0, err
        models.append(load_model_file(model)["weights"])
    assert models[0].keys() == models[1].keys() and all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    first, second = register_twice(lambda *args: run_cli(capsys, *args)[::2], files, tmp_path, "-b", name,
                                   "--model", tmp_path / f"{name}0.pt", "-O", "device=cpu", "--optimize-steps", 1)
    assert first == second


def test_compare_twice_gives_identical_dice(files, tmp_path, capsys):
    (tmp_path / "s1_t1.nii.gz").write_bytes(files["fix"].read_bytes())
    (tmp_path / "s1_seg.nii.gz").write_bytes(files["fix_seg"].read_bytes())

    def dice_column(out):
        code, _, err = run_cli(capsys, "compare", "-b", "affine", "-a", files["mov"], files["mov_seg"],
                               "--targets", tmp_path / "s*_t1.nii.gz", "--truth", tmp_path / "s*_seg.nii.gz", "--protocol", "labels",
                               "-o", out)
        assert code == 0, err
        with open(out / "results.csv", newline="") as f:
            return [(row["method"], row["structure"], row["dice"]) for row in csv.DictReader(f)]

    first = dice_column(tmp_path / "one")
    assert first and first == dice_column(tmp_path / "two")
