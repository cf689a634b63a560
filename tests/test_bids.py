"""atlasreg bids: BIDS in, BIDS-valid derivatives out, BIDS Apps habits, per-subject and index pages."""

import json

import pytest

import atlasreg
from conftest import run_cli as run
from study_files import AFFINE, atlas, bids_dir, hand_volumes, read_tsv, targets  # noqa: F401 (atlas, bids_dir, targets: fixtures)


def test_bids_derivatives_are_valid_and_every_page_lists_every_subject(bids_dir, atlas, tmp_path, capsys):
    """Two partial runs (one participant each), then the group level: BIDS-valid outputs (pybids),
    sidecars with Sources, a data dictionary, an index and reports of every subject (issue 19)."""
    bids = pytest.importorskip("bids")
    from bids_validator import BIDSValidator

    out = tmp_path / "derivatives" / "atlasreg"
    code, _, err = run(capsys, "bids", "--participant_label", "01", "-w", tmp_path / "work", bids_dir, out, "participant",
                       "-a", *atlas, "-b", "affine")  # BIDS Apps habits: the underscore spelling, options first, -w
    assert code == 0 and "1 segmented, 0 done before" in err, err
    code, _, err = run(capsys, "bids", bids_dir, out, "participant", "--participant-label", "02", "-a", *atlas, "-b", "affine")
    assert code == 0 and "2 segmented, 0 done before" in err, err
    index = (out / "index.html").read_text()
    ids = ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert all(f"<td>{i}<br>" in index for i in ids), index  # the second run kept the first one's subject
    stems = ["sub-01/anat/sub-01_desc-atlas", "sub-02/ses-1/anat/sub-02_ses-1_desc-atlas", "sub-02/ses-2/anat/sub-02_ses-2_desc-atlas"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "atlasreg" and generated["Version"] == atlasreg.__version__ and "affine" in generated["Description"]
    assert set(generated) <= {"Name", "Version", "Description", "CodeURL", "Container"}  # BIDS' keys only
    assert description["SourceDatasets"] == [{"URL": "../../study"}] and description["DatasetLinks"] == {"raw": "../../study"}
    settings = json.loads((out / "atlasreg_settings.json").read_text())  # the settings, out of the BIDS files
    assert settings["Backend"] == "affine" and settings["BackendOptions"]["rigid_iterations"] == [100, 30]
    assert settings["Atlases"] == [[str(atlas[0].resolve()), str(atlas[1].resolve())]]
    for stem, source in zip(stems, ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
                                    "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz"]):
        seg = out / f"{stem}_dseg.nii.gz"
        assert atlasreg.load(seg, labels=True).affine.tolist() == AFFINE.tolist()
        rows = read_tsv(out / f"{stem}_morph.tsv")
        assert {int(r["label"]): float(r["volume_mm3"]) for r in rows} == hand_volumes(seg)
        sidecar = json.loads((out / f"{stem}_dseg.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:{source}"] and sidecar["Manual"] is False
        assert (out / description["DatasetLinks"]["raw"] / source).is_file() and BIDSValidator().is_bids(f"/{source}")
    record = json.loads((out / "logs" / "sub-02_ses-1_desc-atlas_record.json").read_text())
    assert record["status"] == "ok" and record["labels"] == f"{stems[1]}_dseg.nii.gz"  # relative to the derivatives folder
    # the registration, both ways, named as BIDS derivatives' transforms: applied, they give the labels and take them back
    anat = out / "sub-02" / "ses-1" / "anat"
    forward, backward = anat / "sub-02_ses-1_from-atlas_to-T1w_mode-image_xfm.nii.gz", anat / "sub-02_ses-1_from-T1w_to-atlas_mode-image_xfm.nii.gz"
    t1w, seg = bids_dir / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", out / f"{stems[1]}_dseg.nii.gz"
    assert (atlasreg.apply(forward, atlas[1], t1w, labels=True).array == atlasreg.load(seg, labels=True).array).mean() >= 0.999
    back = atlasreg.apply(backward, seg, atlas[0], labels=True)
    assert atlasreg.evaluate(back, atlasreg.load(atlas[1], labels=True), "labels")["mean_dice"] >= 0.9
    assert record["transforms"] == [str(path.relative_to(out)) for path in (forward, backward)]
    assert sorted(p.name for p in (out / "sub-02" / "figures").iterdir()) == ["sub-02_ses-1_desc-atlas_dseg.png", "sub-02_ses-2_desc-atlas_dseg.png"]
    dseg = read_tsv(out / "desc-atlas_dseg.tsv")
    assert [(r["index"], r["name"], r["color"]) for r in dseg] == [(str(v), f"label-{v}", "n/a") for v in (1, 2, 3, 4)]
    assert {"logs/", "*.html", "atlasreg_settings.json"} <= set((out / ".bidsignore").read_text().split())

    layout = bids.BIDSLayout(out, validate=True, is_derivative=True)  # raises on a bad dataset_description
    dsegs = layout.get(suffix="dseg", extension=".nii.gz")
    assert sorted(f.path for f in dsegs) == sorted(str(out / f"{stem}_dseg.nii.gz") for stem in stems)
    assert {f.entities["desc"] for f in dsegs} == {"atlas"} and dsegs[0].get_metadata()["Sources"][0].startswith("bids:raw:sub-")
    morphs = layout.get(suffix="morph", extension=".tsv")
    assert len(morphs) == 3 and morphs[0].get_metadata()["volume_mm3"]["Units"] == "mm^3"  # the dictionary, inherited

    for page in ("index.html", "sub-01.html", "sub-02.html"):  # one unit: mm³ everywhere, as in the tables
        text = (out / page).read_text()
        assert "mm³" in text and " mL" not in text and atlasreg.__version__ in text and "rigid_iterations" in text, page
    report = (out / "sub-02.html").read_text()
    assert "sub-02_ses-1" in report and "sub-02_ses-2" in report and "sub-01_" not in report
    assert report.count("class='swatch'") == 8 and "neurological convention" in report  # a legend of 4 labels per image
    assert 'href=\'sub-02.html#sub-02_ses-1\'' in index

    code, _, err = run(capsys, "bids", bids_dir, out, "group")
    assert code == 0, err
    table = read_tsv(out / "desc-atlas_morph.tsv")
    assert sorted({(r["participant_id"], r["session_id"]) for r in table}) == [("sub-01", "n/a"), ("sub-02", "ses-1"), ("sub-02", "ses-2")]
    first = {int(r["label"]): float(r["volume_mm3"]) for r in table if r["session_id"] == "ses-2"}
    assert first == hand_volumes(out / f"{stems[2]}_dseg.nii.gz")
    assert all(f"<td>{i}<br>" in (out / "index.html").read_text() for i in ids)


def test_bids_app_arguments_anywhere_lists_after_their_flag():
    from atlasreg.cli import cli
    from atlasreg.cli_options import bids_app_args

    assert bids_app_args(["bids", "--participant-label", "01", "B", "O", "participant"], cli) == [
        "bids", "B", "O", "participant", "--participant-label", "01"]
    assert bids_app_args(["-v", "--log-file", "bids", "bids", "--participant_label", "01", "sub-02", "B", "O", "participant",
                          "-a", "i.nii", "l.nii", "-w", "W", "--session", "1", "2"], cli) == [
        "-v", "--log-file", "bids", "bids", "B", "O", "participant", "-a", "i.nii", "l.nii", "-w", "W",
        "--participant_label", "01", "--participant_label", "sub-02", "--session", "1", "--session", "2"]
    assert bids_app_args(["bids", "B", "O", "group", "--participant-label=01"], cli) == ["bids", "B", "O", "group", "--participant-label=01"]
    assert bids_app_args(["segment", "--participant-label", "01"], cli) == ["segment", "--participant-label", "01"]


def test_bids_selects_participants_and_sessions_and_refuses_bad_input(bids_dir, atlas, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "bids", bids_dir, out, "participant", "--participant-label", "sub-02", "--session", "2",
                       "-a", *atlas, "-b", "affine")
    assert code == 0, err
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*_dseg.nii.gz"))] == ["sub-02/ses-2/anat/sub-02_ses-2_desc-atlas_dseg.nii.gz"]
    code, _, err = run(capsys, "bids", bids_dir, out, "participant", "--participant-label", "01", "02", "-b", "affine",
                       "-a", *atlas)  # BIDS-Apps lists: several labels after one flag
    assert code == 0 and "2 segmented, 1 done before" in err, err
    for args, message in (
        (("participant", "--participant-label", "07"), "subject 07 not in"),
        (("participant", "-b", "simpleitk"), "made with other settings"),
        (("participant", "--jobs", "0"), "--jobs 0: must be at least 1"),
        (("participant", "--dask", "--scheduler", "tcp://localhost:1"), "not both"),
    ):
        code, _, err = run(capsys, "bids", bids_dir, out, *args, "-a", *atlas)
        assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(capsys, "bids", tmp_path / "atlas", tmp_path / "o2", "participant", "-a", *atlas)
    assert code == 1 and "not a BIDS dataset" in err
    code, _, err = run(capsys, "bids", bids_dir, tmp_path / "empty", "group")
    assert code == 1 and "run the participant level first" in err
