"""Small study folders the study tests share: an atlas, targets alone in a folder, a BIDS dataset (2 subjects,
one with 2 sessions), and readers of what studies write."""

import json
from pathlib import Path

import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume
from conftest import blob_labels, image_from_labels

SHAPE = (24, 26, 22)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_case(folder: Path, name: str, seed: int, shift=(0, 0, 0)) -> tuple[Path, Path]:
    labels = blob_labels(SHAPE, shift=shift)
    folder.mkdir(parents=True, exist_ok=True)
    image = atlasreg.save(Volume(image_from_labels(labels, seed), AFFINE, is_labels=False), folder / f"{name}.nii.gz")
    return image, atlasreg.save(Volume(labels, AFFINE, is_labels=True), folder / f"{name}_seg.nii.gz")


@pytest.fixture
def atlas(tmp_path):
    return write_case(tmp_path / "atlas", "atlas", 0)


@pytest.fixture
def bids_dir(tmp_path):
    """2 subjects; sub-02 has 2 sessions."""
    root = tmp_path / "study"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for folder, name, seed, shift in (("sub-01/anat", "sub-01_T1w", 1, (2, -1, 1)),
                                      ("sub-02/ses-1/anat", "sub-02_ses-1_T1w", 2, (-1, 1, 0)),
                                      ("sub-02/ses-2/anat", "sub-02_ses-2_T1w", 3, (1, 1, -1))):
        write_case(root / folder, name, seed, shift)
        (root / folder / f"{name}_seg.nii.gz").unlink()  # raw data holds no labels
    return root


@pytest.fixture
def targets(tmp_path):
    """Three target images alone in a folder."""
    images = []
    for i, shift in enumerate([(2, -1, 1), (-1, 1, 0), (1, 1, -1)]):
        image, labels = write_case(tmp_path / "targets", f"t{i}", i + 1, shift)
        labels.unlink()
        images.append(image)
    return images


def hand_volumes(path: Path) -> dict[int, float]:
    """mm³ per label counted here: voxels x the voxel size read from the affine's columns."""
    volume = atlasreg.load(path, labels=True)
    size = float(np.prod(np.linalg.norm(volume.affine[:3, :3], axis=0)))
    return {int(v): float((volume.array == v).sum()) * size for v in volume.labels()}


def read_tsv(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]

