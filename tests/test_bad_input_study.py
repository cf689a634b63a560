"""Issue 21, studies, BIDS and compare: bad input refused in one line before any work, never an
input overwritten, never results of other settings kept, never a failure reported as success.

Refusals assert what the first round's do (``conftest.refused``): exit status != 0, one line on
stderr, no traceback, every file under the test folder byte-identical afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import atlasreg
from atlasreg.pipeline import settings_digest
from atlasreg.volume import label_map

from conftest import AFFINE, blob_labels, case_files, refused, run_cli as run, snapshot, unwritable_folder

pytestmark = pytest.mark.usefixtures("system_temp")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


def _atlas(files) -> list:
    return ["-a", files["atlas"], files["atlas_seg"]]


#: the affine backend at a few steps: these tests are about which outputs are kept, not their quality
QUICK = ["-b", "affine", "-O", "rigid_iterations=5,5", "-O", "affine_iterations=5,5"]


# --- an output that is an input, in study mode ------------------------------------------------------

def test_study_output_that_is_an_input_is_refused(capsys, files, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    a, b = shutil.copy(files["target"], scans / "a.nii.gz"), shutil.copy(files["target"], scans / "b.nii.gz")
    a_seg = shutil.copy(files["target_seg"], scans / "a_seg.nii.gz")
    # the case: a's label map would be written over the second input, then segmented as an image
    refused(capsys, tmp_path, "holds the target", "segment", a, a_seg, *_atlas(files), "-b", "affine", "-o", scans)
    # segment DIR -o DIR: a rerun would segment its own outputs
    refused(capsys, tmp_path, "holds the target", "segment", scans, *_atlas(files), "-b", "affine", "-o", scans)
    # an output in another folder that is an atlas file
    out = tmp_path / "out"
    out.mkdir()
    labels_in_out = shutil.copy(files["atlas_seg"], out / "a_seg.nii.gz")
    refused(capsys, tmp_path, "output would overwrite an input", "segment", a, b, "-a", files["atlas"], labels_in_out,
            "-b", "affine", "-o", out)


# --- a study folder remembers the settings that made it ----------------------------------------------

def test_study_folder_refuses_a_rerun_with_other_settings_unless_redo(capsys, files, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(files["target"], scans / "a.nii.gz")
    out = tmp_path / "out"
    study = ["segment", scans, *_atlas(files), *QUICK, "-o", out]
    code, _, err = run(capsys, *study)
    assert code == 0 and "1 segmented, 0 done before" in err, err
    # the case: affine labels kept under an svf run ("0 segmented, 1 done before")
    refused(capsys, tmp_path, "made with other settings (differing: Backend, ", "segment", scans, *_atlas(files), "-b", "svf",
            "-o", out)
    refused(capsys, tmp_path, "made with other settings (differing: BackendOptions", *study, "-O", "metric=mse")
    code, _, err = run(capsys, *study, "-O", "metric=mse", "--redo")
    assert code == 0 and "1 segmented, 0 done before" in err, err  # the affine/mi labels were not kept
    assert json.loads((out / "atlasreg_settings.json").read_text())["BackendOptions"]["metric"] == "mse"
    record = out / "a_seg.json"
    assert "metric=mse" in json.loads(record.read_text())["backend"]
    code, _, err = run(capsys, *study, "-O", "metric=mse")
    assert code == 0 and "0 segmented, 1 done before" in err, err
    # a --redo cut short leaves records of the old settings: they are made again, never counted as done
    record.write_text(json.dumps({**json.loads(record.read_text()), "settings": "of-other-settings"}))
    code, _, err = run(capsys, *study, "-O", "metric=mse")
    assert code == 0 and "1 segmented, 0 done before" in err, err



def test_study_outputs_a_target_pattern_would_reach_are_refused(capsys, files, tmp_path):
    scans = tmp_path / "scans"
    (scans / "x").mkdir(parents=True)
    shutil.copy(files["target"], scans / "a.nii.gz")
    shutil.copy(files["target"], scans / "x" / "b.nii.gz")
    # a rerun would take scans/out/b_seg.nii.gz for a target (and then refuse the folder as holding it)
    refused(capsys, tmp_path, "would match the output " + str(tmp_path / "scans" / "out" / "b_seg.nii.gz"),
            "segment", f"{scans}/*/*.nii.gz", *_atlas(files), *QUICK, "-o", scans / "out")
    # a rerun would take the output folder itself for a target
    refused(capsys, tmp_path, "would match the output " + str(tmp_path / "scans" / "out"),
            "segment", f"{scans}/*", *_atlas(files), *QUICK, "-o", scans / "out")
    # a folder's targets are its own NIfTI files, not its subfolders': an output folder inside it is never read back
    study = ["segment", scans, *_atlas(files), *QUICK, "-o", scans / "out"]
    code, _, err = run(capsys, *study)
    assert code == 0 and "1 segmented, 0 done before, 0 failed" in err, err
    code, _, err = run(capsys, *study)
    assert code == 0 and "0 segmented, 1 done before, 0 failed" in err, err
    assert not list(scans.rglob("*_seg_seg*"))


def test_an_atlas_replaced_in_place_counts_as_other_settings(capsys, files, tmp_path):
    """The settings record each atlas file's SHA-256, not only its path: outputs of the old atlas are
    not kept under the new one; a record without checksums (an older atlasreg's) is not trusted either."""
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(files["target"], scans / "a.nii.gz")
    out = tmp_path / "out"
    study = ["segment", scans, *_atlas(files), *QUICK, "-o", out]
    assert run(capsys, *study)[0] == 0
    settings = json.loads((out / "atlasreg_settings.json").read_text())
    assert settings["AtlasSHA256"] == [[hashlib.sha256(files[name].read_bytes()).hexdigest() for name in ("atlas", "atlas_seg")]]
    original = files["atlas_seg"].read_bytes()
    atlasreg.save(label_map(blob_labels((24, 24, 24), shift=(2, 0, 0)), AFFINE), files["atlas_seg"])
    refused(capsys, tmp_path, "made with other settings (differing: AtlasSHA256;", *study)
    files["atlas_seg"].write_bytes(original)
    assert run(capsys, *study)[2].startswith("0 segmented, 1 done before")  # the same bytes again: the same settings
    older = {k: v for k, v in settings.items() if k != "AtlasSHA256"}  # the folder as an older atlasreg left it
    (out / "atlasreg_settings.json").write_text(json.dumps(older))
    record = json.loads((out / "a_seg.json").read_text())
    (out / "a_seg.json").write_text(json.dumps({**record, "settings": settings_digest(older)}))
    refused(capsys, tmp_path, "made with other settings (differing: AtlasSHA256;", *study)
    code, _, err = run(capsys, *study, "--redo")
    assert code == 0 and "1 segmented, 0 done before" in err, err


def test_an_in_memory_atlas_changed_counts_as_other_settings(files, tmp_path):
    image, labels = atlasreg.load(files["atlas"]), atlasreg.load(files["atlas_seg"], labels=True)
    out = tmp_path / "out"
    options = {"backend": "affine", "backend_options": {"rigid_iterations": (5, 5), "affine_iterations": (5, 5)}, "qc": False}
    assert [r["status"] for r in atlasreg.segment_many([files["target"]], [(image, labels)], out, **options)] == ["ok"]
    assert [r["status"] for r in atlasreg.segment_many([files["target"]], [(image, labels)], out, **options)] == ["done before"]
    shifted = label_map(np.roll(labels.array, 2, axis=0), labels.affine)
    with pytest.raises(atlasreg.AtlasregError, match=r"differing: AtlasSHA256;"):
        atlasreg.segment_many([files["target"]], [(image, shifted)], out, **options)

# --- BIDS: the output folder ------------------------------------------------------------------------

@pytest.fixture
def bids_dir(files, tmp_path) -> Path:
    root = tmp_path / "study"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    shutil.copy(files["target"], root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    return root


def _bids(bids_dir: Path, out: Path, *extra) -> list:
    return ["bids", bids_dir, out, "participant", *QUICK, *extra]


@pytest.mark.parametrize("description", [{"GeneratedBy": {"Name": "atlasreg"}}, {"GeneratedBy": "atlasreg"},
                                         {"GeneratedBy": [1]}, b"{\"GeneratedBy\": \"\xff\xfe\"}", "folder"])
def test_bids_refuses_a_dataset_description_it_did_not_write(capsys, files, bids_dir, tmp_path, description):
    out = tmp_path / "derivatives"
    out.mkdir()
    path = out / "dataset_description.json"
    if description == "folder":
        path.mkdir()
        (path / "keep.txt").write_text("not to be written into")
    elif isinstance(description, bytes):
        path.write_bytes(description)
    else:
        path.write_text(json.dumps(description))
    refused(capsys, tmp_path, "dataset_description.json: not a", *_bids(bids_dir, out, *_atlas(files)))


def test_bids_refuses_an_output_dir_it_cannot_write(capsys, files, bids_dir, tmp_path):
    a_file = tmp_path / "derivatives.txt"
    a_file.write_text("a file")
    refused(capsys, tmp_path, "exists and is not a folder", *_bids(bids_dir, a_file, *_atlas(files)))
    refused(capsys, tmp_path, "exists and is not a folder", *_bids(bids_dir, a_file / "atlasreg", *_atlas(files)))
    locked = unwritable_folder(tmp_path)
    try:
        refused(capsys, tmp_path, "output folder is not writable", *_bids(bids_dir, locked / "derivatives" / "atlasreg", *_atlas(files)))
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_bids_rerun_with_other_settings_is_refused_unless_redo(capsys, files, bids_dir, tmp_path):
    out = tmp_path / "derivatives"
    assert run(capsys, *_bids(bids_dir, out, *_atlas(files)))[0] == 0
    refused(capsys, tmp_path, "made with other settings", *_bids(bids_dir, out, *_atlas(files), "-O", "metric=mse"))
    code, _, err = run(capsys, *_bids(bids_dir, out, *_atlas(files), "-O", "metric=mse", "--redo"))
    assert code == 0 and "1 segmented, 0 done before" in err, err
    settings = json.loads((out / "atlasreg_settings.json").read_text())
    assert settings["BackendOptions"]["metric"] == "mse"
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"



def test_bids_output_in_the_raw_dataset_is_refused(capsys, files, bids_dir, tmp_path):
    """Only BIDS_DIR/derivatives/NAME of the raw dataset may hold outputs; a BIDS_DIR inside OUTPUT_DIR
    is refused only where outputs would land in it."""
    for out in (bids_dir, bids_dir / "sub-01" / "anat", bids_dir / "extra", bids_dir / "derivatives"):
        refused(capsys, tmp_path, f"{out}: would be written into the raw dataset BIDS_DIR", *_bids(bids_dir, out, *_atlas(files)))
    named_as_a_subject = shutil.copytree(bids_dir, tmp_path / "outer" / "sub-01")  # OUTPUT_DIR/sub-01/anat/... is in it
    refused(capsys, tmp_path, "would be written into the raw dataset BIDS_DIR",
            *_bids(named_as_a_subject, tmp_path / "outer", *_atlas(files)))
    raw = snapshot(bids_dir)
    out = bids_dir / "derivatives" / "atlasreg"
    code, _, err = run(capsys, *_bids(bids_dir, out, *_atlas(files)))
    assert code == 0 and "1 segmented, 0 done before" in err, err
    code, _, err = run(capsys, *_bids(bids_dir, out, *_atlas(files)))  # pybids does not index derivatives/ as raw data
    assert code == 0 and "0 segmented, 1 done before" in err, err
    assert {k: v for k, v in snapshot(bids_dir).items() if not k.startswith("derivatives")} == raw
    inside = shutil.copytree(bids_dir, tmp_path / "project" / "raw")  # a BIDS_DIR inside OUTPUT_DIR where no output lands: harmless
    raw = snapshot(inside)
    code, _, err = run(capsys, *_bids(inside, tmp_path / "project", *_atlas(files)))
    assert code == 0 and "1 segmented, 0 done before" in err, err
    assert snapshot(inside) == raw

# --- compare ------------------------------------------------------------------------------------------

def _compare(files, listing: Path, out: Path) -> list:
    return ["compare", "-b", "affine", *_atlas(files), "--dataset", "csv", listing, "--protocol", "labels", "-o", out]


def _broken(kind: str, source: Path, path: Path) -> Path:
    """``source`` (a 24^3 volume) made into one of the review's broken files at ``path``."""
    volume = nib.load(source)
    array = np.asanyarray(volume.dataobj)
    if kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not a volume\n")
    elif kind == "4-D":
        nib.save(nib.Nifti1Image(np.stack([array, array], -1), AFFINE), path)
    elif kind == "NaN":
        nan = array.astype(np.float32)
        nan[12, 12, 12] = np.nan
        nib.save(nib.Nifti1Image(nan, AFFINE), path)
    elif kind == "all-zero":
        nib.save(nib.Nifti1Image(np.zeros_like(array), AFFINE), path)
    else:  # singular affine: the sform's first row zero, no qform (nibabel will not write one)
        data = bytearray(gzip.decompress(source.read_bytes()))
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(data), check=False)
        header["srow_x"] = 0
        header["sform_code"], header["qform_code"] = 1, 0
        data[: len(header.binaryblock)] = header.binaryblock
        path.write_bytes(gzip.compress(bytes(data)))
    return path


#: each broken kind as a target, and as a truth: what the failed pair's line on stderr says
BROKEN = {"truncated": ("not a readable NIfTI file", "not a readable NIfTI file"),
          "text": ("not a readable NIfTI file", "not a readable NIfTI file"),
          "4-D": ("expected a 3-D volume", "expected a 3-D volume"),
          "NaN": ("NaN or infinite intensities", "non-integer values"),
          "all-zero": ("image is empty", "label map is empty"),
          "singular": ("affine is singular", "affine is singular")}


def test_compare_exits_1_and_names_every_failed_pair(capsys, files, tmp_path):
    """The review's broken targets and truths, each in a pair of its own beside one good pair:
    exit 1, every failed pair named with its reason on stderr, the good pair scored, inputs unchanged."""
    small = atlasreg.save(label_map(blob_labels((20, 20, 20)), AFFINE), tmp_path / "small_seg.nii.gz")
    rows = [f"{files['target']},{files['target_seg']},good", f"{files['target']},{small},grid"]
    for n, kind in enumerate(BROKEN):
        rows.append(f"{_broken(kind, files['target'], tmp_path / f'target{n}.nii.gz')},{files['target_seg']},target-{kind}")
        rows.append(f"{files['target']},{_broken(kind, files['target_seg'], tmp_path / f'truth{n}.nii.gz')},truth-{kind}")
    listing = tmp_path / "targets.csv"
    listing.write_text("image,labels,id\n" + "\n".join(rows) + "\n")
    before = snapshot(tmp_path)
    quick = "affine:rigid_iterations=5,5:affine_iterations=5,5"
    code, _, err = run(capsys, "compare", "-b", quick, *_atlas(files), "--dataset", "csv", listing, "--protocol", "labels",
                       "-o", tmp_path / "report")
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and "internal error" not in err, err
    assert lines[-1] == f"atlasreg: error: {len(rows) - 1} of {len(rows)} pairs failed (see above)", err
    expected = {"grid": "different grids"} | {f"{which}-{kind}": message for kind, messages in BROKEN.items()
                                              for which, message in zip(("target", "truth"), messages)}
    named = [line for line in lines if line.startswith(f"  {quick}")]  # one line per failed pair, naming it
    assert len(named) == len(expected), err
    for id, message in expected.items():
        line = [line for line in named if f" on {id}: " in line]
        assert len(line) == 1 and message in line[0], (id, err)
    assert (tmp_path / "report" / "summary.md").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("report")} == before


def test_compare_refuses_a_bad_dataset_csv_before_any_pair(capsys, files, tmp_path):
    listing = tmp_path / "targets.csv"
    listing.write_bytes(bytes(range(256)) * 8)
    refused(capsys, tmp_path, "not a CSV text file", *_compare(files, listing, tmp_path / "report"))
    listing.write_text(f"image,labels,id\n{files['target']},{files['target_seg']},{'x' * 300}\n")
    refused(capsys, tmp_path, "file systems take at most 255", *_compare(files, listing, tmp_path / "report"))
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    listing.write_text(f"image,labels,id\n{passwd},{files['target_seg']},t\n")
    refused(capsys, tmp_path, "not a volume file", *_compare(files, listing, tmp_path / "report"))
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop.name)
    listing.write_text(f"image,labels,id\n{loop},{files['target_seg']},t\n")
    refused(capsys, tmp_path, f"image file {loop} is a broken symlink or a symlink loop", *_compare(files, listing, tmp_path / "report"))


# --- resources: Dask workers and scratch space --------------------------------------------------------

def test_dask_workers_capped_at_the_targets_and_scratch_kept_in_the_output_folder(capsys, files, tmp_path, monkeypatch):
    """``segment DIR --dask --jobs 6`` with 2 targets: a cluster of 2 workers whose scratch space is
    in the output folder and removed after; nothing in the system temp folder (``system_temp``)."""
    distributed = pytest.importorskip("distributed")
    made: list[dict] = []
    real = distributed.LocalCluster

    def in_process(**kwargs):  # the same cluster with threads for workers: no process start-up in a test
        made.append(kwargs)
        return real(**{**kwargs, "processes": False})

    monkeypatch.setattr(distributed, "LocalCluster", in_process)
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        shutil.copy(files["target"], scans / f"{name}.nii.gz")
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", scans, *_atlas(files), *QUICK, "--dask", "--jobs", "6", "-o", out)
    assert code == 0 and "2 segmented, 0 done before, 0 failed" in err, err
    assert len(made) == 1 and made[0]["n_workers"] == 2, made
    assert Path(made[0]["local_directory"]).parent == out
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "the scratch space is removed after the run"
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == before


# --- label tables ---------------------------------------------------------------------------------------

def test_a_label_listed_twice_in_a_lut_is_refused(capsys, files, tmp_path):
    lut = tmp_path / "lut.txt"
    lut.write_text("1 first 10 20 30 0\n2 second 10 20 30 0\n1 again 1 2 3 0\n")
    refused(capsys, tmp_path, "label 1 is listed twice (as 'first' and as 'again')", "volumes", files["target_seg"], "--lut", lut)
    lut.write_text("index\tname\n1\tfirst\n1\tagain\n")
    refused(capsys, tmp_path, "label 1 is listed twice (as 'first' and as 'again')", "volumes", files["target_seg"], "--lut", lut)
