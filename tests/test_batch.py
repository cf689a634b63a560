"""Whole studies: many targets, volumes, QC pages, the task runner, --jobs and Dask."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import atlasreg
from atlasreg.batch import run_tasks, threads_per_job
from atlasreg.lut import ASEG, read_lut
from atlasreg.volume import Volume
from conftest import run_cli as run
from study_files import atlas, read_tsv, targets, write_case  # noqa: F401 (atlas, targets: fixtures)


def test_segment_many_resumes_and_a_corrupt_target_fails_alone(targets, atlas, tmp_path, capsys):
    folder = targets[0].parent
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", folder / "t*.nii.gz", folder / "broken.nii.gz", "-a", *atlas, "-b", "affine", "-o", out)
    assert code == 1 and "1 of 4 targets failed" in err and "broken: " in err and "Traceback" not in err
    segs = sorted(p.name for p in out.glob("*_seg.nii.gz"))
    assert segs == ["t0_seg.nii.gz", "t1_seg.nii.gz", "t2_seg.nii.gz"] and not (out / "broken_seg.json").exists()
    assert sorted(p.name for p in out.glob("*_seg.tsv")) == ["t0_seg.tsv", "t1_seg.tsv", "t2_seg.tsv"]  # names beside each
    assert (out / "t0_seg.tsv").read_text().startswith("index\tname\tcolor\n")
    written = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("t")}

    (folder / "broken.nii.gz").unlink()
    code, _, err = run(capsys, "segment", folder, "-a", *atlas, "-b", "affine", "-o", out)
    assert code == 0 and "0 segmented, 3 done before, 0 failed" in err
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing redone, nothing rewritten
    page = (out / "index.html").read_text()  # the QC page says what made it
    assert f"atlasreg segment {folder} -a" in page and atlasreg.__version__ in page and "rigid_iterations" in page


COMMON = dict(backend="affine")  # default threads per job: 1 job gets every core, 2 jobs half each
OUTPUTS = ("t0_seg.nii.gz", "t1_seg.nii.gz", "t2_seg.nii.gz", "t1_volumes.tsv")


def test_two_jobs_give_the_same_bytes_as_one(targets, atlas, tmp_path):
    one = atlasreg.segment_many(targets, [atlas], tmp_path / "one", jobs=1, **COMMON)
    two = atlasreg.segment_many(targets, [atlas], tmp_path / "two", jobs=2, **COMMON)
    assert [r["status"] for r in one + two] == ["ok"] * 6
    for name in OUTPUTS:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_dask_local_cluster_gives_the_same_bytes_as_one_job(targets, atlas, tmp_path):
    distributed = pytest.importorskip("distributed")
    one = atlasreg.segment_many(targets, [atlas], tmp_path / "one", jobs=1, **COMMON)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dask = atlasreg.segment_many(targets, [atlas], tmp_path / "dask", client=client, **COMMON)
    assert [r["status"] for r in one + dask] == ["ok"] * 6
    for name in OUTPUTS:
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.rows = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("href", "src") if k in attrs]
        self.rows += tag == "tr"


def test_html_index_lists_every_subject_and_links_files_that_exist(targets, atlas, tmp_path):
    bad = targets[0].parent / "zz_broken.nii.gz"
    bad.write_bytes(b"garbage")
    records = atlasreg.segment_many([*targets, bad], [atlas], tmp_path / "out", backend="affine")
    page = (tmp_path / "out" / "index.html").read_text()
    for record in records:
        assert f"<td>{record['id']}" in page
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "failed"] and "not a readable NIfTI file" in page
    assert "called from Python (atlasreg.segment_many)" in page and atlasreg.__version__ in page
    parser = _Links()
    parser.feed(page)
    images = [link for link in parser.links if link.endswith(".png")]
    assert len(set(images)) == 3
    for link in parser.links:
        assert not link.startswith(("/", "http")) and (tmp_path / "out" / link).is_file(), link
    assert (tmp_path / "out" / images[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_volumes_exact_on_anisotropic_oblique_voxels(tmp_path, capsys):
    labels = np.zeros((5, 6, 7), np.int16)
    labels[0:2, 0:3, 0:1] = 17  # 6 voxels
    labels[4, 5, 6] = 53  # 1 voxel
    labels[1:4, 2:6, 3:7] = 2  # 48 voxels
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.5, 1.2, 3.0])  # 1.8 mm³ per voxel
    seg = atlasreg.save(Volume(labels.astype(np.int32), affine, is_labels=True), tmp_path / "seg.nii.gz")
    code, out, err = run(capsys, "volumes", seg)
    assert code == 0, err
    assert out.splitlines() == ["label\tname\tvoxels\tvolume_mm3", "2\tLeft-Cerebral-White-Matter\t48\t86.4",
                                "17\tLeft-Hippocampus\t6\t10.8", "53\tRight-Hippocampus\t1\t1.8"]
    lut = tmp_path / "my.lut"
    lut.write_text("# id name R G B A\n0 Unknown 0 0 0 0\n2 wm 255 255 255 0\n17 hippo 1 2 3 0\n")
    code, _, err = run(capsys, "volumes", seg, "--lut", lut, "-o", tmp_path / "v.tsv")
    assert code == 0, err
    assert [r["name"] for r in read_tsv(tmp_path / "v.tsv")] == ["wm", "hippo", "label-53"]
    assert read_lut(lut)[17].hex_colour == "#010203"
    for args, message in ((("--lut", tmp_path / "none.txt"), "no such colour table"),
                          (("-o", tmp_path / "v.csv"), "output must end in .tsv")):
        code, _, err = run(capsys, "volumes", seg, *args)
        assert code == 1 and message in err and "Traceback" not in err


def test_dseg_tsv_round_trips_as_a_colour_table(tmp_path):
    from atlasreg.lut import write_dseg_tsv

    table = {v: ASEG[v] for v in (2, 17, 53)}
    assert read_lut(write_dseg_tsv(table, tmp_path / "dseg.tsv")) == table
    assert (tmp_path / "dseg.tsv").read_text().splitlines()[:2] == ["index\tname\tcolor", "2\tLeft-Cerebral-White-Matter\t#f5f5f5"]
    (tmp_path / "bad.tsv").write_text("index\tname\tcolor\nx\ty\tn/a\n")
    with pytest.raises(atlasreg.AtlasregError, match="index must be an integer"):
        read_lut(tmp_path / "bad.tsv")


def test_segment_cli_refuses_bad_study_options(targets, atlas, tmp_path, capsys):
    for args, message in (
        ((targets[0], targets[1], "-o", tmp_path / "x.nii.gz"), "-o is a folder"),
        ((targets[0], "-o", tmp_path / "x.nii.gz", "--jobs", "2"), "are for several targets"),
        ((targets[0].parent / "nothing*.nii.gz", "-o", tmp_path / "o"), "nothing matches"),
        ((tmp_path / "atlas" / "missing.nii.gz", targets[0], "-o", tmp_path / "o"), "no such file"),
        ((targets[0], targets[1], "-o", tmp_path / "o", "--threads", "0"), "--threads 0: must be at least 1"),
        ((targets[0], targets[1], "-o", tmp_path / "o", "--lut", tmp_path / "nope.tsv"), "no such colour table"),
    ):
        code, _, err = run(capsys, "segment", *args, "-a", *atlas, "-b", "affine")
        assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
    code, out, _ = run(capsys, "segment", "--help")
    assert "--jobs" in out and "--scheduler" in out and "--dask" in out


def test_atlases_json_names_the_builtin_labels(capsys):
    code, out, _ = run(capsys, "atlases", "--json")
    names = {int(k): v for k, v in json.loads(out)[0]["label_names"].items()}
    assert code == 0 and names[2] == "Left-Cerebral-White-Matter" and names[2035] == "ctx-rh-insula" and len(names) == 85
    assert all(re.fullmatch(r"[A-Za-z-]+", name) for name in names.values())


def _square(task, offset):
    if task == 3:
        raise ValueError("three is bad")
    return task * task + offset


def test_runner_reports_failures_per_task_in_every_mode():
    assert threads_per_job(1, 3) == 3 and threads_per_job(64) == 1
    for jobs in (1, 2):
        outcomes = sorted(run_tasks(_square, [1, 2, 3, 4], (10,), jobs=jobs, progress=False), key=lambda o: o.task)
        assert [o.result for o in outcomes] == [11, 14, None, 26]
        assert [o.error for o in outcomes] == [None, None, "ValueError: three is bad", None]


def test_compare_runs_its_pairs_through_the_runner_in_parallel(targets, atlas, tmp_path):
    from atlasreg.compare import Target, parse_methods, run_compare

    truths = [write_case(tmp_path / "truth", f"t{i}", 0, shift)[1] for i, shift in enumerate([(2, -1, 1), (-1, 1, 0)])]
    study = [Target(f"t{i}", targets[i], truths[i]) for i in range(2)]
    results = run_compare(parse_methods(["affine"]), atlas, study, "labels", tmp_path / "report", progress=False, jobs=2)
    means = [r for r in read_csv(results) if r["kind"] == "mean"]
    assert sorted(r["target"] for r in means) == ["t0", "t1"] and all(r["status"] == "ok" and float(r["dice"]) > 0.5 for r in means)


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))
