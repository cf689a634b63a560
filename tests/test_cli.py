"""The command line: every command works end to end on tiny volumes, and bad input fails cleanly."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume

from conftest import run_cli as run


@pytest.fixture
def files(tmp_path, pair):
    moving, moving_labels, fixed, fixed_labels = pair
    paths = {}
    for name, volume in dict(mov=moving, mov_seg=moving_labels, fix=fixed, fix_seg=fixed_labels).items():
        paths[name] = atlasreg.save(volume, tmp_path / f"{name}.nii.gz")
    return paths


def test_backends_json_lists_first_party(capsys):
    code, out, _ = run(capsys, "backends", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["affine"]["available"] and rows["svf"]["available"]
    for optional in ("ants", "simpleitk"):  # extras: available, or listed with the line that installs them
        assert rows[optional]["available"] or "pip install 'atlasreg[" in rows[optional]["reason"]


def test_fusions_and_options_commands(capsys):
    code, out, _ = run(capsys, "fusions")
    assert code == 0 and "majority" in out and "staple" in out
    code, out, _ = run(capsys, "options", "ants")
    assert code == 0 and "preset=quality" in out


def test_method_options_shared(capsys):
    """-b, -O, --model and --optimize-steps mean the same in every command that registers; segment and
    bids also share the fusion options and --label-interp (bids once lacked --optimize-steps and --label-interp)."""
    shared = ("--backend", "--option", "--model", "--optimize-steps")
    for command, extra in (("register", ()), ("segment", ("--fusion", "--fusion-option", "--label-interp", "--jobs")),
                           ("bids", ("--fusion", "--fusion-option", "--label-interp", "--jobs"))):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and all(option in out for option in (*shared, *extra)), command
    code, out, _ = run(capsys, "register", "--help")
    assert "--label-interp" not in out and "--fusion" not in out


def test_register_writes_warped_image_and_field(capsys, files, tmp_path):
    out, field = tmp_path / "warped.nii.gz", tmp_path / "field.nii.gz"
    code, _, err = run(capsys, "register", files["mov"], files["fix"], "-b", "affine", "-o", out, "--transform-out", field)
    assert code == 0, err
    warped = nib.load(out)
    np.testing.assert_allclose(warped.affine, nib.load(files["fix"]).affine, atol=1e-5)
    assert nib.load(field).shape[-2:] == (1, 3)


def test_segment_and_evaluate(capsys, files, tmp_path):
    out = tmp_path / "seg.nii.gz"
    code, _, err = run(capsys, "segment", files["fix"], "-a", files["mov"], files["mov_seg"], "-b", "affine", "-o", out)
    assert code == 0, err
    seg = nib.load(out)
    assert np.issubdtype(seg.get_data_dtype(), np.integer)
    np.testing.assert_allclose(seg.affine, nib.load(files["fix"]).affine, atol=1e-5)
    code, printed, err = run(capsys, "evaluate", out, files["fix_seg"], "--protocol", "labels", "--json")
    assert code == 0, err
    result = json.loads(printed)
    assert result["mean_dice"] > 0.8  # the atlas differs from the target by a translation only
    assert set(result["dice"]) == {"1", "2", "3", "4"}
    assert result["label_names"] == {"1": "label-1", "2": "label-2", "3": "label-3", "4": "label-4"}  # 1: no FreeSurfer name
    assert (tmp_path / "seg.tsv").read_text().splitlines()[:2] == ["index\tname\tcolor", "1\tlabel-1\tn/a"]


def test_label_names_travel_from_the_atlas_to_segment_volumes_and_evaluate(capsys, files, tmp_path):
    """The dseg.tsv beside the atlas's labels names the output's labels (seg.tsv beside it), which
    `volumes` and `evaluate --json` then use without being told."""
    (tmp_path / "mov_seg.tsv").write_text("index\tname\tcolor\n1\tshell\t#ff0000\n2\tring\tn/a\n3\tcore\tn/a\n4\tblob\tn/a\n")
    out = tmp_path / "seg.nii.gz"
    code, _, err = run(capsys, "segment", files["fix"], "-a", files["mov"], files["mov_seg"], "-b", "affine", "-o", out)
    assert code == 0 and "seg.tsv" in err, err
    assert "1\tshell\t#ff0000" in (tmp_path / "seg.tsv").read_text()
    code, printed, _ = run(capsys, "volumes", out)
    assert code == 0 and [line.split("\t")[1] for line in printed.splitlines()[1:]] == ["shell", "ring", "core", "blob"]
    code, printed, _ = run(capsys, "evaluate", out, files["fix_seg"], "--protocol", "labels", "--json")
    assert code == 0 and json.loads(printed)["label_names"] == {"1": "shell", "2": "ring", "3": "core", "4": "blob"}
    code, _, err = run(capsys, "volumes", out, "-o", tmp_path / "seg.tsv")
    assert code == 1 and "would overwrite an input" in err  # the names beside SEG are an input of `volumes`


def test_evaluate_refuses_a_reference_in_other_label_codes(capsys, files, tmp_path):
    """The same anatomy numbered otherwise (labels permuted) scores noise: refused in one line unless allowed."""
    truth = atlasreg.load(files["fix_seg"], labels=True)
    permuted = atlasreg.save(truth.with_array(np.array([0, 3, 4, 1, 2], np.int32)[truth.array]), tmp_path / "permuted.nii.gz")
    code, _, err = run(capsys, "evaluate", files["fix_seg"], permuted, "--protocol", "labels")
    assert code == 1 and err.startswith("atlasreg: error: prediction and reference labels do not correspond") and err.count("\n") == 1
    assert "--allow-label-mismatch" in err
    code, printed, err = run(capsys, "evaluate", files["fix_seg"], permuted, "--protocol", "labels", "--allow-label-mismatch", "--json")
    assert code == 0 and json.loads(printed)["mean_dice"] < 0.3, err


def test_segment_with_three_atlases_and_fusion(capsys, files, tmp_path, affine):
    """Two atlases call the core (label 3) label 2, and their images agree; the third atlas, whose
    image matches the target's, says 3. Majority voting must say 2 there, weighted voting 3."""
    labels = np.asarray(nib.load(files["mov_seg"]).dataobj)
    image = np.asarray(nib.load(files["mov"]).dataobj)
    merged = np.where(labels == 3, 2, labels)
    dissenters = ["-a", files["mov"], files["mov_seg"]]
    for index in (1, 2):
        img = atlasreg.save(Volume(np.where(labels == 3, image[labels == 2].mean(), image).astype(np.float32), affine,
                                   is_labels=False), tmp_path / f"img{index}.nii.gz")
        seg = atlasreg.save(Volume(merged, affine, is_labels=True), tmp_path / f"seg{index}.nii.gz")
        dissenters = ["-a", img, seg, *dissenters]
    core = np.asarray(nib.load(files["fix_seg"]).dataobj) == 3
    fused = {}
    for fusion in ("majority", "weighted"):
        out = tmp_path / f"{fusion}.nii.gz"
        code, _, err = run(capsys, "segment", files["fix"], *dissenters, "-b", "affine", "-O", "samples=2000", "-f", fusion, "-o", out)
        assert code == 0, err
        fused[fusion] = np.asarray(nib.load(out).dataobj)
        assert set(np.unique(fused[fusion])) <= {0, 1, 2, 3, 4}
    assert np.mean(fused["majority"][core] == 2) > 0.9 and not np.any(fused["majority"] == 3)
    assert np.mean(fused["weighted"][core] == 3) > 0.8


def _bad_inputs(tmp_path, files):
    """Each case: the CLI arguments (output path last) and a fragment of the expected message."""
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), flat)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5, 3), np.float32), np.eye(4)), series)
    nan = tmp_path / "nan.nii.gz"
    data = np.asarray(nib.load(files["fix"]).dataobj).copy()
    data[3, 3, 3] = np.inf
    nib.save(nib.Nifti1Image(data, nib.load(files["fix"]).affine), nan)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.int16), nib.load(files["fix"]).affine), empty)
    other_grid = tmp_path / "other_grid.nii.gz"
    atlasreg.save(Volume(np.ones((8, 8, 8), np.int32), np.eye(4), is_labels=True), other_grid)
    seg = lambda target, image, labels, *extra: ["segment", target, "-a", image, labels, "-b", "affine", *extra]  # noqa: E731
    return {
        "missing": (seg(tmp_path / "nope.nii.gz", files["mov"], files["mov_seg"]), "no such file"),
        "not nifti": (seg(text, files["mov"], files["mov_seg"]), "NIfTI"),
        "2-D": (seg(flat, files["mov"], files["mov_seg"]), "3-D"),
        "4-D": (seg(series, files["mov"], files["mov_seg"]), "3-D"),
        "inf": (seg(nan, files["mov"], files["mov_seg"]), "NaN or infinite"),
        "empty labels": (seg(files["fix"], files["mov"], empty), "empty"),
        "grid mismatch": (seg(files["fix"], files["mov"], other_grid), "different grids"),
        "unknown backend": (["segment", files["fix"], "-a", files["mov"], files["mov_seg"], "-b", "nope"], "unknown backend"),
        "unknown fusion": (seg(files["fix"], files["mov"], files["mov_seg"], "-a", files["mov"], files["mov_seg"], "-f", "nope"), "unknown fusion"),
        "bad option": (seg(files["fix"], files["mov"], files["mov_seg"], "-O", "colour=red"), "unknown option"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "not nifti", "2-D", "4-D", "inf", "empty labels", "grid mismatch", "unknown backend", "unknown fusion", "bad option"],
)
def test_bad_input_one_line_no_output(capsys, files, tmp_path, case):
    args, message = _bad_inputs(tmp_path, files)[case]
    out = tmp_path / "result.nii.gz"
    code, _, err = run(capsys, *args, "-o", out)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob(".result*"))  # no temporary left behind either


def test_console_script_help_and_error_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "atlasreg"]
    help_text = subprocess.run([*exe, "segment", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--atlas" in help_text.stdout
    failed = subprocess.run([*exe, "evaluate", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"atlasreg: error: {tmp_path / 'a.nii.gz'}: no such file"


def test_the_default_backend_is_a_documented_setting_and_help_says_what_defaults_cost(capsys):
    """svf (as accurate as ANTs quality at a tenth of its time: benchmarks/RESULTS.md) is the default
    everywhere through one setting; --help gives each default's cost; no other default names a plugin."""
    import inspect
    import re
    from pathlib import Path

    from atlasreg import bids, pipeline, registry

    assert registry.DEFAULT_BACKEND == "svf" and registry.DEFAULT_FUSION == "majority"
    for function in (pipeline.register, pipeline.segment, pipeline.segment_many, pipeline.register_file, bids.run_participant):
        assert inspect.signature(function).parameters["backend"].default == registry.DEFAULT_BACKEND, function
    package = Path(atlasreg.__file__).parent
    for path in package.rglob("*.py"):  # a plugin named as a default anywhere else in the core
        assert not re.search(r"(backend|fusion)\w*: str = \"", path.read_text()), path
    assert "DEFAULT_BACKEND" in (package.parent / "README.md").read_text()
    for command in ("segment", "register", "bids"):
        code, out, _ = run(capsys, command, "--help")
        text = " ".join(out.split())
        assert code == 0 and "[default: svf, about 14 s a pair at 2 mm on 2 CPU cores" in text and "preset=quality, about 180 s" in text
    code, out, _ = run(capsys, "segment", "--help")
    assert "[default: majority, 0.2 s a target for 3 atlases" in " ".join(out.split())
    code, out, _ = run(capsys, "options", "ants")
    assert "about 6 s a pair" in out and "about 180 s" in out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in np.unique(b) if k]))


def test_register_inverse_out_and_apply_take_labels_there_and_back(capsys, caplog, files, tmp_path):
    """register --transform-out/--inverse-out (svf: an exact inverse), then apply: the atlas labels go
    onto the target's grid, and back onto the atlas's own grid through the inverse (Dice >= 0.95)."""
    field, inverse = tmp_path / "m2f.nii.gz", tmp_path / "f2m.nii.gz"
    code, _, err = run(capsys, "register", files["mov"], files["fix"], "-b", "svf", "-O", "iterations=30,20,5",
                       "-o", tmp_path / "warped.nii.gz", "--transform-out", field, "--inverse-out", inverse)
    assert code == 0, err
    assert nib.load(inverse).shape[:3] == nib.load(files["mov"]).shape and "numerically" not in caplog.text
    there, back = tmp_path / "there.nii.gz", tmp_path / "back.nii.gz"
    code, _, err = run(capsys, "apply", field, files["mov_seg"], "-r", files["fix"], "--labels", "-o", there)
    assert code == 0, err
    assert _dice(np.asarray(nib.load(there).dataobj), np.asarray(nib.load(files["fix_seg"]).dataobj)) > 0.8
    code, _, err = run(capsys, "apply", inverse, there, "-r", files["mov"], "--labels", "-o", back)
    assert code == 0, err
    assert nib.load(back).shape == nib.load(files["mov"]).shape
    assert _dice(np.asarray(nib.load(back).dataobj), np.asarray(nib.load(files["mov_seg"]).dataobj)) >= 0.95
    # the saved field has no velocity: --inverse inverts it numerically, and says so
    code, _, err = run(capsys, "apply", field, there, "-r", files["mov"], "--labels", "--inverse", "-o", tmp_path / "back2.nii.gz")
    assert code == 0 and "inverted numerically" in caplog.text, err
    assert _dice(np.asarray(nib.load(tmp_path / "back2.nii.gz").dataobj), np.asarray(nib.load(back).dataobj)) >= 0.95


def test_apply_equals_ants_apply_transforms_on_the_exported_warp(capsys, files, tmp_path):
    """`atlasreg apply` on the field `register --transform-out` wrote and antsApplyTransforms on the same
    file agree on >= 99.9 % of the target's voxels (labels, nearest neighbour)."""
    ants = pytest.importorskip("ants")
    field, ours = tmp_path / "m2f.nii.gz", tmp_path / "ours.nii.gz"
    code, _, err = run(capsys, "register", files["mov"], files["fix"], "-b", "svf", "-O", "iterations=30,20,5",
                       "-o", tmp_path / "warped.nii.gz", "--transform-out", field)
    assert code == 0, err
    code, _, err = run(capsys, "apply", field, files["mov_seg"], "-r", files["fix"], "--labels", "-o", ours)
    assert code == 0, err
    theirs = ants.apply_transforms(ants.image_read(str(files["fix"])), ants.image_read(str(files["mov_seg"])), [str(field)],
                                   interpolator="nearestNeighbor").numpy()
    mine = np.asarray(nib.load(ours).dataobj)
    assert (mine > 0).mean() > 0.2
    assert (mine == np.rint(theirs)).mean() >= 0.999


def test_apply_bad_input_fails_in_one_line_and_writes_nothing(capsys, files, tmp_path, affine):
    field = tmp_path / "m2f.nii.gz"
    code, _, err = run(capsys, "register", files["mov"], files["fix"], "-b", "affine", "-o", tmp_path / "w.nii.gz", "--transform-out", field)
    assert code == 0, err
    far = affine.copy()
    far[:3, 3] += 500.0  # a reference the field's grid is nowhere near
    far_ref = atlasreg.save(Volume(np.ones((8, 8, 8), np.float32), far, is_labels=False), tmp_path / "far.nii.gz")
    out = tmp_path / "out.nii.gz"
    cases = [
        (("apply", tmp_path / "missing.nii.gz", files["mov_seg"], "-r", files["fix"], "--labels", "-o", out), "missing.nii.gz"),
        (("apply", field, tmp_path / "none.nii.gz", "-r", files["fix"], "-o", out), "none.nii.gz"),
        (("apply", field, files["mov_seg"], "-r", far_ref, "--labels", "-o", out), "lies outside"),
        (("apply", field, files["mov_seg"], "-r", far_ref, "--labels", "--inverse", "-o", out), "nothing of"),
        (("apply", field, files["mov_seg"], "-r", files["fix"], "--labels", "-o", files["mov_seg"]), "overwrite an input"),
    ]
    for args, message in cases:
        code, printed, err = run(capsys, *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not out.exists(), args
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
