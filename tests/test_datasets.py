"""Dataset readers on fake trees laid out like the real releases, and the paper's preprocessing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from atlasreg import AtlasregError
from atlasreg.datasets import (
    MNI_2MM_SHAPE,
    Dataset,
    Subject,
    from_csv,
    from_globs,
    load_image,
    load_labels,
    lpba40,
    mindboggle101,
    oasis,
    open_dataset,
    preprocess,
)
from atlasreg.volume import Volume, foreground, image, zscore

SHAPE = (4, 5, 6)
IMAGE = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) + 1
LABELS = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3).astype(np.uint8)


def write_nifti(path: Path, array: np.ndarray = IMAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.5, 2.0, 1.0])), path)
    return path


def write_analyze(path: Path, array: np.ndarray = IMAGE, gzip_data: bool = False) -> Path:
    """``path`` ends in .img; with ``gzip_data`` the data becomes .img.gz beside a plain .hdr, as LPBA40 ships."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(array, np.diag([0.9, 1.5, 1.2, 1.0])), path)  # Analyze keeps only the voxel sizes
    if not gzip_data:
        return path
    with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return Path(f"{path}.gz")


def lpba40_ids(n: int = 40) -> list[str]:
    return [f"S{i:02d}" for i in range(1, n + 1)]


def lpba40_subject(folder: Path, id: str, suffix: str = ".img", gzip_data: bool = False) -> None:
    for stem, array in ((f"{id}.delineation.skullstripped", IMAGE), (f"{id}.delineation.structure.label", LABELS)):
        if suffix == ".img":
            write_analyze(folder / (stem + ".img"), array, gzip_data)
        else:
            write_nifti(folder / (stem + suffix), array)


# --- LPBA40 ----------------------------------------------------------------------------------


def test_lpba40_per_subject_analyze_folders(tmp_path):
    for id in lpba40_ids():
        lpba40_subject(tmp_path / id, id)
    ds = lpba40(tmp_path)
    assert ds.ids == tuple(lpba40_ids())
    assert ds.name == "lpba40" and ds.protocol == "lpba40"
    s = ds.subject("S07")
    assert s.image == tmp_path / "S07" / "S07.delineation.skullstripped.img"
    assert s.labels == tmp_path / "S07" / "S07.delineation.structure.label.img"
    assert [x.id for x in ds.split("train")] == lpba40_ids(30)
    assert [x.id for x in ds.split("test")] == lpba40_ids()[30:]


def test_lpba40_release_layout_with_gzipped_analyze_loads_right_array_and_affine(tmp_path):
    base = tmp_path / "LPBA40" / "delineation_space"
    for id in ("S01", "S02"):
        lpba40_subject(base / id, id, gzip_data=True)
    ds = lpba40(tmp_path / "LPBA40")
    assert ds.ids == ("S01", "S02")
    assert ds.subject("S02").image == base / "S02" / "S02.delineation.skullstripped.img.gz"
    assert ds.split("train") == ds.subjects and ds.split("test") == ()
    image = load_image(ds.subject("S01"))
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, IMAGE)
    # Analyze has no orientation: nibabel's default is x flipped, origin at the volume centre
    centre = (np.array(SHAPE) - 1) / 2 * np.array([0.9, 1.5, 1.2])
    expected = np.diag([-0.9, 1.5, 1.2, 1.0])
    expected[:3, 3] = centre * [1, -1, -1]
    np.testing.assert_allclose(image.affine, expected, atol=1e-5)
    labels = load_labels(ds.subject("S01"))
    assert labels.array.dtype == np.int32
    np.testing.assert_array_equal(labels.array, LABELS)


def test_lpba40_flat_nifti_layout(tmp_path):
    for id in lpba40_ids(3):
        lpba40_subject(tmp_path, id, suffix=".nii.gz")
    ds = lpba40(tmp_path)
    assert ds.ids == ("S01", "S02", "S03")
    assert ds.subject("S03").labels == tmp_path / "S03.delineation.structure.label.nii.gz"
    np.testing.assert_array_equal(load_labels(ds.subject("S03")).array, LABELS)


def test_lpba40_errors(tmp_path):
    write_nifti(tmp_path / "other" / "brain.nii.gz")
    with pytest.raises(AtlasregError, match="not an LPBA40 folder"):
        lpba40(tmp_path / "other")
    with pytest.raises(AtlasregError, match="no such folder"):
        lpba40(tmp_path / "missing")
    lpba40_subject(tmp_path / "ds" / "S01", "S01")
    (tmp_path / "ds" / "S01" / "S01.delineation.structure.label.img").unlink()
    with pytest.raises(AtlasregError, match="S01 lacks its label file"):
        lpba40(tmp_path / "ds")
    write_analyze(tmp_path / "ds" / "S01" / "S01.delineation.structure.label.img", LABELS)
    (tmp_path / "ds" / "S01" / "S01.delineation.skullstripped.hdr").unlink()
    with pytest.raises(AtlasregError, match=r"lacks S01\.delineation\.skullstripped\.hdr"):
        lpba40(tmp_path / "ds")


# --- Mindboggle-101 --------------------------------------------------------------------------

MINDBOGGLE_COHORTS = {
    "NKI-TRT-20_volumes": [f"NKI-TRT-20-{i}" for i in range(1, 21)],
    "NKI-RS-22_volumes": [f"NKI-RS-22-{i}" for i in range(1, 23)],
    "OASIS-TRT-20_volumes": [f"OASIS-TRT-20-{i}" for i in range(1, 21)],
    "MMRR-21_volumes": ["MMRR-21-1", "MMRR-21-2"],
    "Extra-18_volumes": ["Colin27-1", "HLN-12-1", "Twins-2-1", "Afterthought-1"],
}


def mindboggle_subject(folder: Path) -> None:
    write_nifti(folder / "t1weighted_brain.MNI152.nii.gz")
    write_nifti(folder / "labels.DKT31.manual+aseg.MNI152.nii.gz", LABELS)


def test_mindboggle101_release_cohort_folders_and_paper_split(tmp_path):
    for cohort, subjects in MINDBOGGLE_COHORTS.items():
        for s in subjects:
            mindboggle_subject(tmp_path / cohort / s)
    ds = mindboggle101(tmp_path)
    assert len(ds.subjects) == 68 and ds.protocol == "mindboggle101"
    assert set(ds.ids) == {s for subjects in MINDBOGGLE_COHORTS.values() for s in subjects}
    train, test = ds.split("train"), ds.split("test")
    assert len(train) == 42 and len(test) == 20
    nki = MINDBOGGLE_COHORTS["NKI-TRT-20_volumes"] + MINDBOGGLE_COHORTS["NKI-RS-22_volumes"]
    assert {s.id for s in train} == set(nki)
    assert [s.id for s in test] == MINDBOGGLE_COHORTS["OASIS-TRT-20_volumes"]  # natural order: -2 before -10
    colin = ds.subject("Colin27-1")
    assert colin.image == tmp_path / "Extra-18_volumes" / "Colin27-1" / "t1weighted_brain.MNI152.nii.gz"
    assert colin.labels == tmp_path / "Extra-18_volumes" / "Colin27-1" / "labels.DKT31.manual+aseg.MNI152.nii.gz"


def test_mindboggle101_flat_subject_folders_with_underscores(tmp_path):
    for s in ("OASIS-TRT-20_1", "OASIS-TRT-20_2", "NKI-TRT-20_1", "HLN-12_1"):
        mindboggle_subject(tmp_path / s)
    ds = mindboggle101(tmp_path)
    assert [s.id for s in ds.split("test")] == ["OASIS-TRT-20_1", "OASIS-TRT-20_2"]
    assert [s.id for s in ds.split("train")] == ["NKI-TRT-20_1"]
    assert len(ds.subjects) == 4


def test_mindboggle101_errors(tmp_path):
    write_nifti(tmp_path / "other" / "OASIS-TRT-20-1" / "t1weighted.nii.gz")
    with pytest.raises(AtlasregError, match="not a Mindboggle-101 folder"):
        mindboggle101(tmp_path / "other")
    with pytest.raises(AtlasregError, match="no such folder"):
        mindboggle101(tmp_path / "missing")
    write_nifti(tmp_path / "ds" / "MMRR-21-1" / "t1weighted_brain.MNI152.nii.gz")
    with pytest.raises(AtlasregError, match=r"MMRR-21-1 lacks its label file labels\.DKT31"):
        mindboggle101(tmp_path / "ds")


# --- OASIS -----------------------------------------------------------------------------------

OASIS_IDS = ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1", "OASIS_OAS1_0004_MR1"]


def oasis_tree(root: Path) -> None:
    for id in OASIS_IDS:
        for name in ("aligned_norm.nii.gz", "aligned_seg35.nii.gz", "aligned_seg4.nii.gz"):
            write_nifti(root / id / name, IMAGE if name == "aligned_norm.nii.gz" else LABELS)


def test_oasis_neurite_layout_and_segmentation_choice(tmp_path):
    oasis_tree(tmp_path)
    (tmp_path / "subjects.txt").write_text("\n".join(OASIS_IDS))
    ds = oasis(tmp_path)
    assert ds.ids == tuple(OASIS_IDS) and ds.protocol == "labels" and dict(ds.splits) == {}
    assert ds.subject("OASIS_OAS1_0002_MR1").image == tmp_path / "OASIS_OAS1_0002_MR1" / "aligned_norm.nii.gz"
    assert ds.subject("OASIS_OAS1_0002_MR1").labels == tmp_path / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz"
    assert oasis(tmp_path, seg="seg4").subjects[0].labels.name == "aligned_seg4.nii.gz"
    assert open_dataset("oasis", tmp_path, seg="seg4").subjects[0].labels.name == "aligned_seg4.nii.gz"
    with pytest.raises(AtlasregError, match="seg35, seg4"):
        oasis(tmp_path, seg="seg99")


def test_oasis_errors(tmp_path):
    write_nifti(tmp_path / "other" / "OAS1_0001" / "aligned_norm.nii.gz")
    with pytest.raises(AtlasregError, match="not a neurite-OASIS folder"):
        oasis(tmp_path / "other")
    oasis_tree(tmp_path / "ds")
    (tmp_path / "ds" / OASIS_IDS[1] / "aligned_seg35.nii.gz").unlink()
    oasis(tmp_path / "ds", seg="seg4")
    with pytest.raises(AtlasregError, match="OASIS_OAS1_0002_MR1 lacks its label file aligned_seg35"):
        oasis(tmp_path / "ds")


# --- generic folders -------------------------------------------------------------------------


def test_from_globs_pairs_by_subject_id(tmp_path):
    for i in (1, 2, 10):
        write_nifti(tmp_path / "images" / f"case{i}_img.nii.gz")
        write_nifti(tmp_path / "labels" / f"case{i}_seg.nii.gz", LABELS)
    ds = from_globs("images/case*_img.nii.gz", "labels/case*_seg.nii.gz", root=tmp_path)
    assert ds.ids == ("1", "2", "10") and ds.protocol == "labels"
    assert ds.subject("10").image == tmp_path / "images" / "case10_img.nii.gz"
    assert ds.subject("10").labels == tmp_path / "labels" / "case10_seg.nii.gz"
    nested = from_globs("images/*.nii.gz", None, root=tmp_path)
    assert nested.ids == ("case1_img", "case2_img", "case10_img") and nested.subjects[0].labels is None


def test_from_globs_bids_like_pattern_takes_repeated_wildcard_once(tmp_path):
    for s in ("01", "02"):
        write_nifti(tmp_path / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz")
        write_nifti(tmp_path / f"sub-{s}" / "anat" / f"sub-{s}_dseg.nii.gz", LABELS)
    ds = from_globs("sub-*/anat/sub-*_T1w.nii.gz", "sub-*/anat/sub-*_dseg.nii.gz", root=tmp_path)
    assert ds.ids == ("01", "02")


def test_from_globs_errors(tmp_path):
    for i in (1, 2, 3):
        write_nifti(tmp_path / "images" / f"s{i}.nii.gz")
    for i in (1, 2):
        write_nifti(tmp_path / "labels" / f"s{i}.nii.gz", LABELS)
    with pytest.raises(AtlasregError, match="matches 3 images but .* matches 2 label maps"):
        from_globs("images/*.nii.gz", "labels/*.nii.gz", root=tmp_path)
    write_nifti(tmp_path / "labels" / "s4.nii.gz", LABELS)
    with pytest.raises(AtlasregError, match=r"id '3'.*id '4'"):
        from_globs("images/s*.nii.gz", "labels/s*.nii.gz", root=tmp_path)
    with pytest.raises(AtlasregError, match="matches no files"):
        from_globs("images/*.mgz", None, root=tmp_path)


def test_from_csv_resolves_relative_paths(tmp_path):
    write_nifti(tmp_path / "data" / "a.nii.gz")
    write_nifti(tmp_path / "data" / "a_seg.nii.gz", LABELS)
    write_nifti(tmp_path / "data" / "b.nii.gz")
    rows = ["image,labels,id,split", "data/a.nii.gz,data/a_seg.nii.gz,,train", "data/b.nii.gz,,bee,test"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    ds = from_csv(tmp_path / "list.csv")
    assert ds.ids == ("a", "bee") and ds.name == "list"
    assert ds.subject("a").labels == tmp_path / "data" / "a_seg.nii.gz"
    assert ds.subject("bee").image == tmp_path / "data" / "b.nii.gz" and ds.subject("bee").labels is None
    assert dict(ds.splits) == {"train": ("a",), "test": ("bee",)}
    assert open_dataset("csv", tmp_path / "list.csv").ids == ds.ids


def test_from_csv_errors(tmp_path):
    (tmp_path / "nolabels.csv").write_text("image\na.nii.gz\n")
    with pytest.raises(AtlasregError, match="header row image,labels"):
        from_csv(tmp_path / "nolabels.csv")
    (tmp_path / "missing.csv").write_text("image,labels\nnope.nii.gz,\n")
    with pytest.raises(AtlasregError, match="line 2: image file .*nope.nii.gz does not exist"):
        from_csv(tmp_path / "missing.csv")


def test_open_dataset_dispatches_and_refuses_unknown_kinds(tmp_path):
    lpba40_subject(tmp_path / "S01", "S01", suffix=".nii.gz")
    assert open_dataset("LPBA40", tmp_path).name == "lpba40"
    with pytest.raises(AtlasregError, match="unknown dataset kind 'ibsr'"):
        open_dataset("ibsr", tmp_path)


# --- Dataset ---------------------------------------------------------------------------------


def make_dataset(n: int = 5, splits=None) -> Dataset:
    subjects = tuple(Subject(f"s{i}", Path(f"s{i}.nii.gz"), Path(f"s{i}_seg.nii.gz")) for i in range(n))
    return Dataset("toy", Path("."), subjects, "labels", splits or {})


def test_pairs_without_atlas_are_all_ordered_distinct_pairs():
    ds = make_dataset(5)
    pairs = ds.pairs()
    assert len(pairs) == 5 * 4
    assert len({(a.id, b.id) for a, b in pairs}) == 20 and all(a.id != b.id for a, b in pairs)


def test_pairs_with_atlas_go_from_atlas_to_every_other_subject():
    ds = make_dataset(5, {"test": ("s2", "s3", "s4")})
    pairs = ds.pairs(atlas="s1")
    assert len(pairs) == 4
    assert all(a.id == "s1" for a, _ in pairs) and "s1" not in {b.id for _, b in pairs}
    assert [(a.id, b.id) for a, b in ds.pairs("test", atlas="s0")] == [("s0", "s2"), ("s0", "s3"), ("s0", "s4")]
    assert len(ds.pairs("test", atlas="s3")) == 2
    assert len(ds.pairs("test")) == 6


def test_dataset_validation_and_lookups():
    with pytest.raises(AtlasregError, match="unknown protocol"):
        Dataset("toy", Path("."), (), "dkt")
    subject = Subject("a", Path("a.nii"), None)
    with pytest.raises(AtlasregError, match="duplicate subject ids a"):
        Dataset("toy", Path("."), (subject, subject), "labels")
    with pytest.raises(AtlasregError, match="split 'test' names unknown subjects zz"):
        make_dataset(2, {"test": ("s0", "zz")})
    ds = make_dataset(2)
    with pytest.raises(AtlasregError, match="no subject 'zz'"):
        ds.subject("zz")
    with pytest.raises(AtlasregError, match="no split 'train'; splits: none"):
        ds.split("train")
    with pytest.raises(AtlasregError, match="has no label map"):
        load_labels(subject)


# --- preprocessing ---------------------------------------------------------------------------


def brain(shape=(12, 10, 9)) -> np.ndarray:
    """A skull-stripped-like image: positive, varying intensities inside a box, zero outside."""
    rng = np.random.default_rng(0)
    array = np.zeros(shape, np.float32)
    array[2:-2, 2:-2, 2:-2] = rng.uniform(50, 150, (shape[0] - 4, shape[1] - 4, shape[2] - 4))
    return array


LPS_1MM = np.diag([-1.0, -1.0, 1.5, 1.0])


def test_preprocess_reorients_resamples_and_zscores_images():
    volume = Volume(brain(), LPS_1MM, is_labels=False)
    raw = preprocess(volume, zscore=False)
    out = preprocess(volume)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    np.testing.assert_allclose(out.spacing, [2.0, 2.0, 2.0])
    assert out.shape == (6, 5, 7)
    mask = foreground(raw.array)
    assert raw.array[mask].mean() > 50  # unnormalised without zscore
    assert abs(out.array[mask].mean()) < 1e-5 and abs(out.array[mask].std() - 1) < 1e-5
    assert len(np.unique(out.array[raw.array == 0])) == 1  # one linear map: the zero background stays uniform


def test_zscore_statistics_ignore_a_noisy_background():
    """A bright cube in clipped noise: counting non-zero noise as brain would shift the cube's mean."""
    rng = np.random.default_rng(0)
    array = np.clip(rng.normal(0.0, 3.0, (24, 24, 24)), 0, None).astype(np.float32)
    array[6:18, 6:18, 6:18] = rng.normal(100.0, 10.0, (12, 12, 12))
    array[10:14, 10:14, 10:14] = 20.0  # a dark 'ventricle' inside: part of the foreground
    cube = np.zeros(array.shape, bool)
    cube[6:18, 6:18, 6:18] = True
    assert np.array_equal(foreground(array), cube)
    out = zscore(image(array, np.eye(4))).array
    assert abs(out[cube].mean()) < 1e-4 and abs(out[cube].std() - 1) < 1e-4
    assert (array != 0).sum() > 1.5 * cube.sum()  # the non-zero rule would have counted background


def test_preprocess_labels_stay_integer_and_crop_pad_to_shape():
    labels = Volume(np.where(brain() > 100, 2, np.where(brain() > 0, 1, 0)).astype(np.int32), LPS_1MM, is_labels=True)
    out = preprocess(labels, shape=(8, 3, 7))
    assert out.shape == (8, 3, 7) and out.array.dtype == np.int32
    assert set(np.unique(out.array)) <= {0, 1, 2} and 2 in out.array
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert MNI_2MM_SHAPE == (91, 109, 91)


def test_preprocess_refuses_what_it_cannot_do():
    with pytest.raises(AtlasregError, match="all zero"):
        preprocess(Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), is_labels=False))
    with pytest.raises(AtlasregError, match="three positive integers"):
        preprocess(Volume(brain(), np.eye(4), is_labels=False), shape=(4, 4))
