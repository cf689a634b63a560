"""`atlasreg compare`: results, report files, resume, a failing method, bad input."""

import csv

import numpy as np
import pytest

import atlasreg
from atlasreg import AtlasregError
from atlasreg.cli import main
from atlasreg.compare import Target, parse_methods, run_compare
from atlasreg.models import save_model
from atlasreg.registry import get_backend
from atlasreg.report import write_report
from atlasreg.volume import Volume

from conftest import blob_labels, image_from_labels

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture
def study(tmp_path):
    """An atlas and three targets (shifted blobs) with their truths, as files; labels 1-4."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, shift, seed in (("atlas", (0, 0, 0), 0), ("s1", (2, -1, 1), 1), ("s2", (-1, 2, 0), 2), ("s3", (1, 1, -2), 3)):
        labels = blob_labels(shift=shift)
        atlasreg.save(Volume(image_from_labels(labels, seed), AFFINE, is_labels=False), folder / f"{name}_t1.nii.gz")
        atlasreg.save(Volume(labels, AFFINE, is_labels=True), folder / f"{name}_seg.nii.gz")
    atlas = (folder / "atlas_t1.nii.gz", folder / "atlas_seg.nii.gz")
    targets = [Target(n, folder / f"{n}_t1.nii.gz", folder / f"{n}_seg.nii.gz") for n in ("s1", "s2", "s3")]
    return atlas, targets


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_methods_specs_and_models(tmp_path):
    methods = parse_methods(["affine,ants:preset=fast", "ants:preset=quality:iterations=10,5,affine:metric=mi"], {})
    assert [m.label for m in methods] == ["affine", "ants:preset=fast", "ants:preset=quality:iterations=10,5", "affine:metric=mi"]
    assert methods[1].backend == "ants" and methods[1].options == {"preset": "fast"}
    backend = get_backend("voxelmorph")
    tiny = backend.config({"enc_channels": [2, 2, 2, 2], "dec_channels": [2] * 7})
    model = save_model(tmp_path / "vm.pt", "voxelmorph", tiny, backend.build_network(tiny))
    assert parse_methods(["voxelmorph"], {"voxelmorph": str(model)})[0].options == {"model": str(model)}
    with pytest.raises(AtlasregError, match="unknown backend"):
        parse_methods(["nope"], {})
    with pytest.raises(AtlasregError, match="given twice"):
        parse_methods(["affine,affine"], {})
    with pytest.raises(AtlasregError, match="not compared"):
        parse_methods(["affine"], {"contrastive": "c.pt"})
    with pytest.raises(AtlasregError, match="KEY=VALUE"):
        parse_methods(["ants:fast"], {})


def test_compare_writes_every_file_resumes_and_survives_a_failing_method(study, tmp_path, monkeypatch):
    atlas, targets = study
    out = tmp_path / "report"
    methods = parse_methods(["affine,affine:samples=500"], {})
    calls = []
    backend_class = type(get_backend("affine"))
    original = backend_class.register

    def flaky(self, moving, fixed, **options):  # the 500-sample setting fails on the second target only
        calls.append(options["samples"])
        if options["samples"] == 500 and calls.count(500) == 2:
            raise RuntimeError("solver diverged")
        return original(self, moving, fixed, **options)

    monkeypatch.setattr(backend_class, "register", flaky)
    run_compare(methods, atlas, targets[:2], "labels", out, progress=False)
    assert len(calls) == 4
    rows = _rows(out / "results.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["method"], r["target"]) for r in failed] == [("affine:samples=500", "s2")]
    assert "solver diverged" in failed[0]["error"]
    means = [r for r in rows if r["kind"] == "mean" and r["status"] == "ok"]
    assert len(means) == 3
    for row in means:
        assert 0.5 < float(row["dice"]) <= 1 and float(row["seconds"]) > 0 and float(row["peak_rss_mb"]) > 0
        assert float(row["folding_percent"]) == 0 and float(row["hd95_mm"]) >= 0
    labels = [r for r in rows if r["kind"] == "label" and r["method"] == "affine" and r["target"] == "s1"]
    assert sorted(r["structure"] for r in labels) == ["1", "2", "3", "4"]

    # resume with a third target, failed pairs kept: only its two pairs run
    run_compare(methods, atlas, targets, "labels", out, progress=False, retry_failed=False)
    assert len(calls) == 6
    rows = _rows(out / "results.csv")
    assert sorted({(r["method"], r["target"]) for r in rows}) == sorted(
        (m.label, t.id) for m in methods for t in targets
    )
    written = write_report(out, methods, atlas, targets, "labels")
    assert {p.relative_to(out).as_posix() for p in written} == {"summary.md", "dice_boxplot.png", *(
        f"figures/{t.id}_{kind}.png" for t in targets for kind in ("overlays", "deformation"))}  # every target drawn
    for path in written:
        assert path.stat().st_size > 0
    assert (out / "dice_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| affine |" in summary and "| affine:samples=500 |" in summary and "Wilcoxon" in summary
    assert "affine:samples=500 failed on: atlas_t1 → s2" in summary
    assert "HD95 mm" in summary.splitlines()[2]
    assert (out / "segmentations" / "affine" / "atlas_t1" / "s3.nii.gz").exists()


def test_summary_bolds_the_best_and_tests_against_it(study, tmp_path):
    from atlasreg.report import collect, summary_markdown

    rows = []
    for method, scores in (("good", [0.9, 0.8, 0.85]), ("bad", [0.5, 0.4, 0.45])):
        for target, d in zip(("a", "b", "c"), scores):
            rows.append({"method": method, "target": target, "kind": "mean", "structure": "mean", "dice": str(d), "status": "ok",
                         "seconds": "2", "folding_percent": "0", "peak_rss_mb": "100", "peak_gpu_mb": ""})
            rows.append({"method": method, "target": target, "kind": "region", "structure": "frontal", "dice": str(d), "status": "ok"})
    text = summary_markdown(collect(rows, ["good", "bad"]), "lpba40", "atlas.nii.gz", 3)
    good = next(line for line in text.splitlines() if line.startswith("| good |"))
    bad = next(line for line in text.splitlines() if line.startswith("| bad |"))
    assert "**0.850 ± 0.041**" in good and "**" not in bad.split("|")[1:9][0]
    assert "| bad | -0.400 | 3 | 0.25 |" in text  # all three targets worse: the smallest p for n = 3


def test_compare_cli_end_to_end_and_errors(study, tmp_path, capsys):
    atlas, _ = study
    data = atlas[0].parent
    out = tmp_path / "cli-report"
    args = ["compare", "-b", "affine", "-a", str(atlas[0]), str(atlas[1]), "-a", str(data / "s1_t1.nii.gz"), str(data / "s1_seg.nii.gz"),
            "--targets", str(data / "s*_t1.nii.gz"), "--truth", str(data / "s*_seg.nii.gz"), "--protocol", "labels", "--figure-target", "2",
            "-o", str(out)]
    main(args)
    captured = capsys.readouterr()
    assert "| affine |" in captured.out and "over (atlas, target) pairs (4)" in captured.out
    # each target against each atlas; an atlas is not a target
    assert {(r["atlas"], r["target"]) for r in _rows(out / "results.csv")} == {(a, t) for a in ("atlas_t1", "s1_t1") for t in ("2", "3")}
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["2_deformation.png", "2_overlays.png"]

    for extra, message in ((["-o", str(tmp_path / "z")], "-o / --output given twice"),  # click would keep the last one silently
                           (["--leave-one-out"], "--leave-one-out takes its atlases from the targets")):
        with pytest.raises(SystemExit):
            main(args + extra)
        assert message in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "-b", "nope", "-a", str(atlas[0]), str(atlas[1]), "--targets", str(data / "s*_t1.nii.gz"),
              "--truth", str(data / "s*_seg.nii.gz"), "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("atlasreg: error: unknown backend 'nope'") and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["compare", "-b", "affine", "-a", str(atlas[0]), str(atlas[1]), "-o", str(tmp_path / "y")])
    assert "--targets and --truth" in capsys.readouterr().err


def test_leave_one_out_pairs_every_subject_with_every_other_and_draws_the_chosen_target(study, tmp_path):
    from atlasreg.compare import leave_one_out_of, pairs_of

    atlas, targets = study
    atlases, chosen = leave_one_out_of(targets)
    assert [(a.id, t.id) for a, t in pairs_of(atlases, chosen)] == [
        ("s2", "s1"), ("s3", "s1"), ("s1", "s2"), ("s3", "s2"), ("s1", "s3"), ("s2", "s3")]  # never an atlas on itself
    out = tmp_path / "loo"
    methods = parse_methods(["affine"], {})
    run_compare(methods, atlases, chosen, "labels", out, progress=False, figure_targets=["s2"])
    means = [r for r in _rows(out / "results.csv") if r["kind"] == "mean"]
    assert sorted((r["atlas"], r["target"]) for r in means) == sorted((a.id, t.id) for a, t in pairs_of(atlases, chosen))
    assert all(r["status"] == "ok" and float(r["hd95_mm"]) >= 0 for r in means)
    written = write_report(out, methods, atlases, chosen, "labels", figure_targets=["s2"])
    assert {p.relative_to(out).as_posix() for p in written} == {"summary.md", "dice_boxplot.png", "figures/s2_overlays.png",
                                                                 "figures/s2_deformation.png"}
    summary = (out / "summary.md").read_text()
    assert "mean ± std over (atlas, target) pairs (6)" in summary and "With 6 pairs" in summary
    hd95 = np.mean([float(r["hd95_mm"]) for r in means])
    header, _, row = summary.splitlines()[2:5]
    column = [c.strip() for c in header.split("|")].index("HD95 mm")
    assert [c.strip() for c in row.split("|")][column].strip("*").startswith(f"{hd95:.2f} ±")
    with np.load(out / "deformations" / "affine" / "s2.npz") as saved:  # per view: det J and the two in-plane source coordinates
        assert sorted(saved.files) == sorted(f"{view}_{key}" for view, axes in (("axial", "01"), ("coronal", "02"), ("sagittal", "12"))
                                             for key in ("jacobian", *axes))
        assert np.allclose(saved["axial_jacobian"], 1.0)  # the affine backend: no non-linear part, no volume change
    with pytest.raises(AtlasregError, match="not a target"):
        run_compare(methods, atlases, chosen, "labels", out, progress=False, figure_targets=["s9"])
    with pytest.raises(AtlasregError, match="at least 2"):
        leave_one_out_of(targets[:1])


def test_choose_targets_several_atlases_from_a_dataset_or_leave_one_out(study, tmp_path):
    from atlasreg.compare import choose_targets

    atlas, targets = study
    listing = tmp_path / "subjects.csv"
    listing.write_text("image,labels,id\n" + "".join(f"{t.image},{t.truth},{t.id}\n" for t in targets))
    atlases, chosen, protocol = choose_targets(dataset=("csv", str(listing)), atlas_ids=["s1", "s3"], protocol="labels")
    assert [a.id for a in atlases] == ["s1", "s3"] and [t.id for t in chosen] == ["s2"] and protocol == "labels"
    atlases, chosen, _ = choose_targets(dataset=("csv", str(listing)), leave_one_out=True)
    assert [a.id for a in atlases] == [t.id for t in chosen] == ["s1", "s2", "s3"]
    atlases, chosen, _ = choose_targets(atlases=[(str(atlas[0]), str(atlas[1])), (str(targets[0].image), str(targets[0].truth))],
                                        dataset=("csv", str(listing)))
    assert [a.id for a in atlases] == ["atlas_t1", "s1_t1"] and [t.id for t in chosen] == ["s2", "s3"]
    for kwargs, message in ((dict(atlas_ids=["s1"], leave_one_out=True), "takes its atlases from the targets"),
                            (dict(atlas_ids=["s1"], atlases=[(str(atlas[0]), str(atlas[1]))]), "not both"),
                            (dict(), "give the atlas")):
        with pytest.raises(AtlasregError, match=message):
            choose_targets(dataset=("csv", str(listing)), **kwargs)
