"""Bad input to `atlasreg compare` (issue 10): target ids that are paths, resuming a cut results file,
a results file it did not write, failed pairs, a method's missing model: refused or recovered cleanly.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import case_files, compare_args, refused, run_cli as run


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


# --- 3: compare target ids that are paths --------------------------------------------------------

def test_compare_ids_cannot_write_outside_the_report(capsys, files, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("image,labels,id\n"
                       f"{files['target']},{files['target_seg']},../../escaped\n"
                       f"{files['target']},{files['target_seg']},{tmp_path / 'outside' / 'escaped'}\n")
    report = tmp_path / "deep" / "report"
    report.parent.mkdir()
    code, _, err = run(capsys, "compare", "-b", "affine", "-a", files["atlas"], files["atlas_seg"],
                       "--dataset", "csv", listing, "--protocol", "labels", "-o", report)
    assert code == 0, err
    escaped = sorted(tmp_path.rglob("*escaped*"))  # per target: its segmentation, deformation and two figures
    assert len(escaped) == 8 and all(report in p.parents for p in escaped)
    assert len([p for p in escaped if report / "segmentations" / "affine" in p.parents]) == 2
    assert not (tmp_path / "outside").exists()


def test_compare_ids_giving_one_file_name_are_refused(capsys, files, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(f"image,labels,id\n{files['target']},{files['target_seg']},a/b\n{files['target']},{files['target_seg']},a_b\n")
    refused(capsys, tmp_path, "same file name", "compare", "-b", "affine", "-a", files["atlas"], files["atlas_seg"],
            "--dataset", "csv", listing, "--protocol", "labels", "-o", tmp_path / "report")


# --- 4: resuming compare -------------------------------------------------------------------------

def _pairs(path: Path) -> dict[tuple[str, str], list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    pairs: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        pairs.setdefault((row["method"], row["target"]), []).append(row)
    return pairs


def test_compare_resume_redoes_a_pair_cut_mid_row(capsys, files, tmp_path):
    out = tmp_path / "report"
    assert run(capsys, *compare_args(files, out))[0] == 0
    results = out / "results.csv"
    whole = _pairs(results)
    text = results.read_text()
    results.write_text(text[: len(text) - 30])  # a crash while writing: the last row is cut
    assert run(capsys, *compare_args(files, out))[0] == 0
    again = _pairs(results)
    assert again.keys() == whole.keys()
    for pair, rows in again.items():
        assert [(r["kind"], r["structure"]) for r in rows] == [(r["kind"], r["structure"]) for r in whole[pair]]
        assert all(None not in r.values() and r["status"] == "ok" for r in rows)


def test_compare_refuses_a_results_file_it_did_not_write(capsys, files, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.csv").write_bytes(bytes(range(256)) * 4)
    refused(capsys, tmp_path, "not an atlasreg compare results file", *compare_args(files, out))
    (out / "results.csv").write_text("name,score\nx,1\n")
    refused(capsys, tmp_path, "not an atlasreg compare results file", *compare_args(files, out))


def test_compare_retries_failed_pairs_unless_told_to_skip_them(capsys, files, tmp_path):
    out = tmp_path / "report"
    assert run(capsys, *compare_args(files, out))[0] == 0
    results = out / "results.csv"
    with open(results, newline="") as f:
        header = next(csv.reader(f))
    failed = dict.fromkeys(header, "") | {"method": "affine", "atlas": "atlas", "target": "target", "kind": "mean", "structure": "mean",
                                            "status": "failed", "error": "RuntimeError: boom"}
    with open(results, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerow(failed)
    code, _, err = run(capsys, *compare_args(files, out, "--skip-failed"))
    assert code == 1 and "  affine on target: RuntimeError: boom" in err and "1 of 1 pairs failed" in err  # kept, still reported
    assert [r["status"] for r in _pairs(results)[("affine", "target")]] == ["failed"]
    assert run(capsys, *compare_args(files, out))[0] == 0
    rows = _pairs(results)[("affine", "target")]
    assert {r["status"] for r in rows} == {"ok"} and rows[-1]["kind"] == "mean"


# --- 14: compare checks every method's model before any pair ---------------------------------------

def test_compare_checks_every_methods_model_before_any_pair(capsys, files, tmp_path):
    out = tmp_path / "report"
    args = compare_args(files, out)
    args[args.index("affine")] = "affine,voxelmorph"
    refused(capsys, tmp_path, "neither a declared model name", *args, "--model", f"voxelmorph={tmp_path / 'nope.pt'}")
    assert not out.exists()
