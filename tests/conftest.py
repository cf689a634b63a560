"""Shared fixtures and helpers: small synthetic volumes, the CLI run in-process, the shared label maps' folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from scipy import ndimage

from atlasreg.atlases import cache_dir
from atlasreg.volume import Volume, label_map

# torch makes its compiler cache folder on first use of an optimiser, by default in the system's temporary
# folder; as the CLI does, the tests keep it beside atlasreg's cache (nothing of a test run left in /tmp)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))

# the shared label maps beside the checkout (CI, the main checkout) or where ATLASREG_LABELMAPS says (a worktree
# elsewhere), as the benchmarks find them
LABELMAPS = Path(os.environ.get("ATLASREG_LABELMAPS", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "labelmaps"))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process on ``args`` (any objects, turned into strings); return (exit code, stdout, stderr)."""
    from atlasreg.cli import main

    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder: Path, message: str, *args) -> str:
    """Run the CLI; assert a clean one-line refusal mentioning ``message`` that changed nothing under
    ``folder`` (exit status != 0, one line, no "internal error", no traceback, every file byte-identical)."""
    before = snapshot(folder)
    code, _, err = run_cli(capsys, *args)
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atlasreg: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(folder) == before
    return err


@pytest.fixture
def system_temp(tmp_path_factory, monkeypatch) -> Path:
    """A fresh, empty folder as the system temp folder (TMPDIR, and tempfile's cached choice) for
    the test; the test errors if anything is left in it afterwards."""
    folder = tmp_path_factory.mktemp("system-temp")
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    left = sorted(p.name for p in folder.iterdir())
    assert not left, f"left in the system temp folder: {left}"


def unwritable_folder(tmp_path: Path) -> Path:
    """``tmp_path/locked`` made read-only (the caller makes it writable again), or for root, who
    writes anywhere chmod allows, /proc/1; skips the test where there is no such folder."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder = Path("/proc/1")
        if not folder.is_dir() or os.access(folder, os.W_OK):
            pytest.skip("no folder this user cannot write to")
    return folder


SHAPE = (24, 24, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def case_files(folder: Path) -> dict[str, Path]:
    """A target and an atlas (image + labels) on a 24^3 2 mm grid, and the target's truth, in ``folder``."""
    import atlasreg
    from atlasreg.volume import image, label_map

    atlas_labels, target_labels = blob_labels(SHAPE), blob_labels(SHAPE, shift=(1, -1, 1))
    volumes = {"atlas": image(image_from_labels(atlas_labels, 1), AFFINE), "atlas_seg": label_map(atlas_labels, AFFINE),
               "target": image(image_from_labels(target_labels, 2), AFFINE), "target_seg": label_map(target_labels, AFFINE)}
    return {name: atlasreg.save(volume, folder / f"{name}.nii.gz") for name, volume in volumes.items()}


def blob_labels(shape=(32, 36, 30), seed: int = 0, shift=(0, 0, 0)) -> np.ndarray:
    """A small 'brain': nested ellipsoids (labels 1-3) plus a blob (label 4), optionally shifted."""
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 - s for n, s in zip(shape, shift)), indexing="ij"))
    radii = np.array(shape)[:, None, None, None] * 0.38
    r = np.sqrt(((grid / radii) ** 2).sum(0))
    labels = np.zeros(shape, np.int32)
    labels[r < 1.0] = 1
    labels[r < 0.75] = 2
    labels[r < 0.4] = 3
    blob = np.sqrt(((grid - np.array([4, -3, 2])[:, None, None, None]) ** 2).sum(0)) < 4
    labels[blob & (labels > 0)] = 4
    return labels


def image_from_labels(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Intensities 0/40/80/120/160 per label, lightly blurred, with a little noise."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(labels.astype(np.float32) * 40.0, 0.7)
    return (image + rng.normal(0, 2.0, labels.shape)).astype(np.float32)


@pytest.fixture
def affine() -> np.ndarray:
    """An oblique 2 mm grid (not the identity, not axis-aligned), as real scans often are."""
    a = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-2.0, 2.0, 2.0])
    a[:3, 3] = [40.0, -30.0, -25.0]
    return a


@pytest.fixture
def pair(affine):
    """(moving image, moving labels, fixed image, fixed labels): the fixed brain is shifted by 2 voxels."""
    moving_labels = blob_labels()
    fixed_labels = blob_labels(shift=(2, -1, 1))
    return (
        Volume(image_from_labels(moving_labels, 1), affine, is_labels=False),
        Volume(moving_labels, affine, is_labels=True),
        Volume(image_from_labels(fixed_labels, 2), affine, is_labels=False),
        Volume(fixed_labels, affine, is_labels=True),
    )


def segment_args(files, *extra, backend: str = "affine") -> list:
    """``atlasreg segment`` of the case files' target with their one atlas (tests of bad input)."""
    return ["segment", files["target"], "-a", files["atlas"], files["atlas_seg"], "-b", backend, *extra]


def compare_args(files, out, *extra) -> list:
    """``atlasreg compare -b affine`` on the case files' one target (id "target"), listed in a CSV beside the inputs."""
    listing = files["target"].with_name("targets.csv")
    listing.write_text(f"image,labels,id\n{files['target']},{files['target_seg']},target\n")
    return ["compare", "-b", "affine", "-a", files["atlas"], files["atlas_seg"], "--dataset", "csv", listing,
            "--protocol", "labels", "-o", out, *extra]


T1_LIKE = {0: 0, 1: 40, 2: 80, 3: 120, 4: 160}  # dark outside, dark rim (CSF), bright inside
T2_LIKE = {0: 0, 1: 160, 2: 120, 3: 80, 4: 40}  # dark outside, bright rim: the relation turns back at the edge


def relabelled(labels: np.ndarray, table: dict[int, float], seed: int) -> np.ndarray:
    """An image of ``labels`` with intensity ``table[label]``, lightly blurred, a little noise."""
    values = np.vectorize(table.get)(labels).astype(np.float32)
    return ndimage.gaussian_filter(values, 0.7) + np.random.default_rng(seed).normal(0, 2.0, labels.shape).astype(np.float32)


def real_labelmaps(count: int) -> Iterator[Volume]:
    """The first ``count`` shared label maps at 4 mm (every 4th voxel, affine scaled to match)."""
    from atlasreg.io import load

    paths = sorted(LABELMAPS.glob("subject*.nii.gz"))[:count]
    if not paths:
        pytest.skip(f"shared label maps not found in {LABELMAPS}")
    for path in paths:
        full = load(path, labels=True)
        yield label_map(full.array[::4, ::4, ::4], full.affine @ np.diag([4.0, 4.0, 4.0, 1.0]))


def brain_only(labels: Volume) -> Volume:
    """``labels``' brain (labels below 100), cropped to it with 2 voxels to spare (about 39 x 55 x 48 at 4 mm)."""
    array = np.where(labels.array < 100, labels.array, 0)
    inside = np.argwhere(array > 0)
    low, high = inside.min(0) - 2, inside.max(0) + 3
    affine = labels.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ low
    return Volume(array[low[0]:high[0], low[1]:high[1], low[2]:high[2]], affine, is_labels=True)
