"""Issue 21, volumes: headers with impossible voxel sizes, symlink loops, targets too large for the
memory available, label maps with very many labels. Refusals assert what the first round's do
(``conftest.refused``): exit status != 0, one line, no traceback, every file byte-identical.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import atlasreg.io
from atlasreg.spatial import _sample_onehot

from conftest import case_files, refused, run_cli as run, snapshot

pytestmark = pytest.mark.usefixtures("system_temp")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


def _with_voxel_sizes(source: Path, path: Path, sizes: tuple[float, float, float]) -> Path:
    """``source`` with pixdim[1:4] = ``sizes`` and neither sform nor qform, written byte by byte
    (nibabel would 'fix' such a header on writing it)."""
    header = nib.Nifti1Header.from_fileobj(gzip.open(source), check=False)
    data = bytearray(gzip.open(source).read())
    header["pixdim"][1:4] = sizes
    header["sform_code"] = header["qform_code"] = 0
    data[: len(header.binaryblock)] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(data)))
    return path


@pytest.mark.parametrize("sizes", [(0, 0, 0), (-2, 2, 2), (2, 2, float("nan"))])
def test_header_with_non_positive_voxel_sizes_is_refused(capsys, files, tmp_path, sizes):
    bad = _with_voxel_sizes(files["target"], tmp_path / "bad.nii.gz", sizes)
    message = "voxel sizes must be positive"
    refused(capsys, tmp_path, message, "segment", bad, "-a", files["atlas"], files["atlas_seg"], "-b", "affine", "-o", tmp_path / "o.nii.gz")
    refused(capsys, tmp_path, message, "register", files["atlas"], bad, "-b", "affine", "-o", tmp_path / "o.nii.gz")
    refused(capsys, tmp_path, message, "register", bad, files["target"], "-b", "affine", "-o", tmp_path / "o.nii.gz")


def test_bids_subject_with_non_positive_voxel_sizes_fails_with_the_reason(capsys, files, tmp_path):
    root = tmp_path / "study"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    _with_voxel_sizes(files["target"], root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", (0, 0, 0))
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "bids", root, tmp_path / "out", "participant", "-a", files["atlas"], files["atlas_seg"], "-b", "affine")
    assert code == 1 and "voxel sizes must be positive" in err and "1 of 1 targets failed" in err and "Traceback" not in err, err
    assert not list((tmp_path / "out").rglob("*_dseg.nii.gz"))
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == before


def test_a_symlink_loop_as_target_is_refused(capsys, files, tmp_path):
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop.name)
    refused(capsys, tmp_path, "symlink loop", "segment", loop, "-a", files["atlas"], files["atlas_seg"], "-b", "affine",
            "-o", tmp_path / "o.nii.gz")
    refused(capsys, tmp_path, "symlink loop", "register", files["atlas"], loop, "-b", "affine", "-o", tmp_path / "o.nii.gz")


def test_a_target_too_large_for_the_memory_is_refused_before_it_is_read(capsys, files, tmp_path, tmp_path_factory, monkeypatch):
    """A valid 800^3 uint8 target (a sparse file: nothing is allocated) needs about 38 GiB at
    TARGET_BYTES_PER_VOXEL; with 8 GiB available it is refused from its header, before its 512 MB
    of data are read (they are zeros: read, they would be refused as an empty image instead)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((800, 800, 800))
    header.set_sform(np.diag([0.3, 0.3, 0.3, 1.0]), code=1)
    header["vox_offset"] = 352
    big = tmp_path_factory.mktemp("big") / "big.nii"  # outside tmp_path: the byte-for-byte snapshot would read it
    with open(big, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)
        f.truncate(352 + 800**3)
    monkeypatch.setattr(atlasreg.io, "available_memory", lambda: 8 * 2**30)
    err = refused(capsys, tmp_path, "512000000 voxels need about 38.1 GiB", "segment", big, "-a", files["atlas"], files["atlas_seg"],
                  "-b", "affine", "-o", tmp_path / "o.nii.gz")
    assert "only 8.0 GiB is available" in err
    monkeypatch.setattr(atlasreg.io, "available_memory", lambda: 2**20)  # any target: 24^3 with 1 MiB to spare
    refused(capsys, tmp_path, "need about", "register", files["atlas"], files["target"], "-b", "affine", "-o", tmp_path / "o.nii.gz")


def test_an_address_space_limit_bounds_the_memory_available(monkeypatch):
    """The issue's run was under a 6 GB cap (ulimit -v): the check counts that cap, not the machine's memory."""
    import resource

    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (6 * 2**30, real(which)[1]) if which == resource.RLIMIT_AS else real(which))
    assert atlasreg.io.available_memory() <= 6 * 2**30


def test_available_memory_is_a_positive_number_of_bytes():
    assert 2**20 < atlasreg.io.available_memory() < 2**50


def _onehot_by_label(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The definition: every label's indicator interpolated linearly, the largest weight winning (smallest label on a tie)."""
    best = np.full(coords.shape[1:], -1.0)
    out = np.zeros(coords.shape[1:], dtype=labels.dtype)
    for label in np.unique(labels):
        weight = ndimage.map_coordinates((labels == label).astype(np.float64), coords, order=1, mode="nearest")
        better = weight > best
        best[better], out[better] = weight[better], label
    return out


@pytest.mark.parametrize("shape", [(9, 8, 7), (1, 6, 5)])
def test_onehot_interpolation_equals_its_definition(shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, shape).astype(np.int32)
    coords = rng.uniform(-2, np.array(shape)[:, None, None, None] + 1, (3, 16, 16, 16))
    coords[:, :4] = np.round(coords[:, :4] * 2) / 2  # half-voxel points: ties between two labels
    assert np.array_equal(_sample_onehot(labels, coords), _onehot_by_label(labels, coords))


def test_onehot_interpolation_of_20000_labels(tmp_path):
    """20000 labels cost what a few do (the old loop over labels ran past 120 s here)."""
    labels = (np.arange(28**3, dtype=np.int32).reshape(28, 28, 28) % 20000) + 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    atlasreg.save(atlasreg.Volume(labels, affine, is_labels=True), tmp_path / "many.nii.gz")
    shifted = affine.copy()
    shifted[:3, 3] = 0.4
    moved = atlasreg.Transform.from_matrix(atlasreg.Volume(np.zeros((28, 28, 28), np.float32), shifted, is_labels=False), np.eye(4))
    warped = moved.warp_labels(atlasreg.load(tmp_path / "many.nii.gz", labels=True), "onehot")
    assert set(np.unique(warped.array)) - {0} <= set(range(1, 20001)) and len(np.unique(warped.array)) > 10000
