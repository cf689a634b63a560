"""Issue 10, "Failures seen": every case refused cleanly before any work, here those of files and
outputs (an output that is an input, temporaries of a killed write, all-zero images, labels beyond
int32, headers claiming more data than the file, unwritable folders). The other surfaces:
test_bad_input_compare, _options, _models, _study, _train, _volumes, plugins/test_ants_interrupt.

Each refusal asserts: exit status != 0, one line on stderr (no "internal error", no traceback),
and every file under the test folder byte-identical afterwards (so the inputs are untouched and
no output or temporary file was left).
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume

from conftest import AFFINE, SHAPE, case_files, compare_args, refused, segment_args, unwritable_folder


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


# --- 1, 2: an output that is an input -----------------------------------------------------------

def test_output_equal_to_an_input_is_refused(capsys, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(files["target"])
    hard = tmp_path / "hard.nii.gz"
    os.link(files["atlas"], hard)
    overwrite = "output would overwrite an input"
    refused(capsys, tmp_path, overwrite, *segment_args(files, "-o", files["target"]))
    refused(capsys, tmp_path, overwrite, *segment_args(files, "-o", "./target.nii.gz"))
    refused(capsys, tmp_path, overwrite, *segment_args(files, "-o", link))
    refused(capsys, tmp_path, overwrite, *segment_args(files, "-o", files["atlas_seg"]))
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine", "-o", files["atlas"])
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine", "-o", hard)
    refused(capsys, tmp_path, overwrite, "synth", files["atlas_seg"], "-o", files["atlas_seg"])
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine",
            "-o", tmp_path / "x.nii.gz", "--transform-out", tmp_path / "x.nii.gz")


# --- 5: temporaries of a killed write --------------------------------------------------------------

def test_temporary_of_a_killed_write_is_removed_on_the_next_write(tmp_path, files):
    script = ("import os, signal, sys\nfrom atlasreg.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, tmp_path / "out.nii.gz"])
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".out.nii.gz.*"))
    assert len(left) == 1 and not (tmp_path / "out.nii.gz").exists()
    atlasreg.save(atlasreg.load(files["target"]), tmp_path / "other.nii.gz")
    assert not list(tmp_path.glob(".*")), "the dead process's temporary should be gone"


def test_a_live_writers_temporary_is_kept(tmp_path, files):
    from atlasreg.io import atomic_path

    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        tmp.write_bytes(b"in progress")
        atlasreg.save(atlasreg.load(files["target"]), tmp_path / "b.nii.gz")
        assert tmp.exists()


# --- 8: all-zero images --------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["target", "atlas"])
def test_all_zero_image_is_refused(capsys, files, tmp_path, which):
    atlasreg.save(Volume(np.zeros(SHAPE, np.float32), AFFINE, is_labels=False), files[which])
    refused(capsys, tmp_path, "image is empty (all zero)", *segment_args(files, "-o", tmp_path / "out.nii.gz"))


@pytest.mark.parametrize("which", ["target", "atlas"])
def test_a_single_slice_image_is_refused(capsys, files, tmp_path, which):
    """A 2-D slice stored as X x Y x 1 used to fail deep in the affine stage as "image is empty"."""
    image = atlasreg.load(files[which])
    atlasreg.save(Volume(image.array[:, :, :1], image.affine, is_labels=False), files[which])
    refused(capsys, tmp_path, "at least 2 voxels along each axis", *segment_args(files, "-o", tmp_path / "out.nii.gz", backend="svf"))


# --- 10: labels beyond int32 ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [2**31, 2**32 + 3])
def test_labels_beyond_int32_are_refused(capsys, files, tmp_path, value):
    array = np.asarray(nib.load(files["target_seg"]).dataobj).astype(np.int64)
    array[array == 3] = value
    nib.save(nib.Nifti1Image(array, AFFINE, dtype=np.int64), tmp_path / "big.nii.gz")
    refused(capsys, tmp_path, "labels above 2147483647", "evaluate", tmp_path / "big.nii.gz", files["target_seg"], "--protocol", "labels")


# --- 11: headers claiming more data than the file holds ---------------------------------------------

def _lying_header(path: Path, shape: tuple[int, int, int]) -> Path:
    """A NIfTI whose header claims ``shape`` (float32) but which holds 4 KB of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + np.ones(1024, np.float32).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("name,shape,message", [("huge.nii", (1000,) * 3, "has only"), ("huge.nii.gz", (1000,) * 3, "cannot hold"),
                                                ("vast.nii.gz", (2000,) * 3, "not a brain image")])
def test_header_claiming_more_data_than_the_file_is_refused_before_reading(capsys, files, tmp_path, name, shape, message):
    target = _lying_header(tmp_path / name, shape)
    refused(capsys, tmp_path, message, "segment", target, "-a", files["atlas"], files["atlas_seg"], "-b", "affine",
            "-o", tmp_path / "out.nii.gz")


# --- 12: output folder not writable, output naming a folder -----------------------------------------

def test_output_naming_a_folder_is_refused(capsys, files, tmp_path):
    folder = tmp_path / "dir.nii.gz"
    folder.mkdir()
    refused(capsys, tmp_path, "is a folder", *segment_args(files, "-o", folder))
    refused(capsys, tmp_path, "is a folder", *segment_args(files, "-o", tmp_path))


def test_output_folder_not_writable_is_found_before_work(capsys, files, tmp_path):
    folder = unwritable_folder(tmp_path)
    try:
        refused(capsys, tmp_path, "not writable", *segment_args(files, "-o", folder / "out.nii.gz"))
        refused(capsys, tmp_path, "not writable", "register", files["atlas"], files["target"], "-b", "affine",
                "-o", tmp_path / "ok.nii.gz", "--transform-out", folder / "field.nii.gz")
        refused(capsys, tmp_path, "not writable", *compare_args(files, folder / "report"))
        refused(capsys, tmp_path, "not writable", "train", "-b", "voxelmorph", "--images", files["target"],
                "--atlas", files["atlas"], files["atlas_seg"], "-o", folder / "model.pt")
    finally:
        (tmp_path / "locked").chmod(0o755)
