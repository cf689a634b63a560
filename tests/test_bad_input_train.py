"""Issue 21, training and model files: config values checked like command-line options wherever
they come from, a damaged model file refused, a failed run leaving nothing behind. Refusals assert
what the first round's do (``conftest.refused``): exit status != 0, one line, no traceback, every
file byte-identical.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import AFFINE, SHAPE, case_files, refused, run_cli as run

pytestmark = pytest.mark.usefixtures("system_temp")

torch = pytest.importorskip("torch")

SMALL = {"shape": [16, 16, 16], "crop": [16, 16, 16], "enc_channels": [4, 8, 8, 8], "dec_channels": [8, 8, 8, 8, 8, 4, 4]}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


def _train(files, tmp_path, *extra) -> list:
    return ["train", "-b", "voxelmorph", "--images", files["target"], "--atlas", files["atlas"], files["atlas_seg"],
            "-o", tmp_path / "model.pt", *extra]


@pytest.mark.parametrize("flag,message", [
    (("--spacing", "nan"), "config spacing=nan: must be a finite number"),
    (("--shape", "0,0,0"), "config shape=0: must be 16 to 1024"),
    (("--shape", "a,b,c"), "--shape 'a,b,c': expected whole numbers"),
    (("--shape", "640,640,640"), "more than 16777216 (256^3)"),
    (("--crop", "128,128,128"), "larger than the working grid"),
    (("-C", "int_steps=nan"), "config int_steps='nan': must be a finite number"),
    (("-C", "int_steps=1000000000"), "must be 0 to 16"),
    (("-C", "enc_channels=[]"), "config enc_channels=[]: expected a non-empty list"),
    (("--weight", "bogus=1"), "unknown loss term 'bogus'"),
    (("--losses", "sim,bogus"), "unknown loss term 'bogus'"),
])
def test_train_refuses_config_values_a_network_cannot_run_with(capsys, files, tmp_path, flag, message):
    refused(capsys, tmp_path, message, *_train(files, tmp_path, *flag))


def _small_model(tmp_path: Path) -> Path:
    from atlasreg.models import save_model
    from atlasreg.registry import get_backend

    backend = get_backend("voxelmorph")
    return save_model(tmp_path / "vm.pt", "voxelmorph", backend.config(SMALL), backend.build_network(backend.config(SMALL)))


def _segment_with(files, tmp_path, model: Path) -> list:
    return ["segment", files["target"], "-a", files["atlas"], files["atlas_seg"], "-b", "voxelmorph", "--model", model,
            "-o", tmp_path / "o.nii.gz"]


@pytest.mark.parametrize("key,value,message", [("spacing", float("nan"), "must be a finite number"),
                                               ("shape", [640, 640, 640], "(256^3)"),
                                               ("int_steps", 10**9, "must be 0 to 16")])
def test_model_file_config_is_checked_on_load_like_options(capsys, files, tmp_path, monkeypatch, key, value, message):
    """Refused before the network is built (the 640^3 grid allocated ~3 GB before failing)."""
    from atlasreg.registry import get_backend

    path = _small_model(tmp_path)
    state = torch.load(path, weights_only=True)
    state["config"][key] = value
    torch.save(state, path)
    monkeypatch.setattr(type(get_backend("voxelmorph")), "build_network", lambda *a: pytest.fail("network built"))
    err = refused(capsys, tmp_path, message, *_segment_with(files, tmp_path, path))
    assert f"{path}: voxelmorph: config {key}=" in err


def test_a_model_file_whose_weights_changed_is_refused(capsys, files, tmp_path):
    from atlasreg.models import load_model_file

    path = _small_model(tmp_path)
    state = load_model_file(path)  # the file as written loads
    first = next(iter(state["weights"]))
    state["weights"][first].view(-1)[0] += 1.0  # one damaged number, the checksum as written
    torch.save(state, path)
    refused(capsys, tmp_path, "its weights do not match the checksum it was written with", *_segment_with(files, tmp_path, path))


def test_a_model_file_with_bytes_damaged_is_refused(capsys, files, tmp_path):
    path = _small_model(tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # a stretch of the file zeroed, as a bad copy would
    path.write_bytes(bytes(data))
    refused(capsys, tmp_path, str(path), *_segment_with(files, tmp_path, path))


@pytest.mark.parametrize("how", ["failed", "interrupted"])
def test_a_failed_train_leaves_no_cache_log_or_model_and_its_error_starts_a_line(capsys, files, tmp_path, monkeypatch, how):
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(files["target_seg"], maps / "a.nii.gz")  # the reference: its array is cached first (MODEL.pt.cache/ made)
    if how == "failed":
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int32), AFFINE), maps / "b.nii.gz")  # then this one fails
        expected = (1, "label map is empty")
    else:
        shutil.copy(files["target_seg"], maps / "b.nii.gz")
        def interrupt(*args, **kwargs):  # Ctrl-C once every map is cached
            assert (tmp_path / "model.pt.cache").is_dir()
            raise KeyboardInterrupt

        monkeypatch.setattr("atlasreg.synth_pairs.SynthPairs", interrupt)
        expected = (130, "atlasreg: error: interrupted")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on a terminal only
    code, _, err = run(capsys, "train", "-b", "voxelmorph", "--synth", maps / "*.nii.gz", "-o", tmp_path / "model.pt",
                       "--steps", "1", *(f"-C{k}={v}" for k, v in SMALL.items()))
    assert "\r" in err, "a bar was drawn"
    assert code == expected[0] and expected[1] in err and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("atlasreg: error: "), "the error line continues a progress bar's line"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["maps", *(p.name for p in files.values())])


def test_demo_refuses_a_spacing_that_is_not_a_number_before_writing(capsys, tmp_path):
    refused(capsys, tmp_path, "--spacing must be 1 to 8 mm", "demo", "-o", tmp_path / "demo", "--backends", "affine",
            "--targets", "1", "--spacing", "nan")
    assert not (tmp_path / "demo").exists()
