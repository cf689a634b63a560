"""Issue 10, "Failures seen": every case refused cleanly before any work.

Each refusal asserts: exit status != 0, one line on stderr (no "internal error", no traceback),
and every file under the test folder byte-identical afterwards (so the inputs are untouched and
no output or temporary file was left).
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import atlasreg
from atlasreg.volume import Volume

from conftest import AFFINE, SHAPE, case_files, refused, run_cli as run, unwritable_folder


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


def _segment(files, *extra, backend: str = "affine"):
    return ["segment", files["target"], "-a", files["atlas"], files["atlas_seg"], "-b", backend, *extra]


# --- 1, 2: an output that is an input -----------------------------------------------------------

def test_output_equal_to_an_input_is_refused(capsys, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(files["target"])
    hard = tmp_path / "hard.nii.gz"
    os.link(files["atlas"], hard)
    overwrite = "output would overwrite an input"
    refused(capsys, tmp_path, overwrite, *_segment(files, "-o", files["target"]))
    refused(capsys, tmp_path, overwrite, *_segment(files, "-o", "./target.nii.gz"))
    refused(capsys, tmp_path, overwrite, *_segment(files, "-o", link))
    refused(capsys, tmp_path, overwrite, *_segment(files, "-o", files["atlas_seg"]))
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine", "-o", files["atlas"])
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine", "-o", hard)
    refused(capsys, tmp_path, overwrite, "synth", files["atlas_seg"], "-o", files["atlas_seg"])
    refused(capsys, tmp_path, overwrite, "register", files["atlas"], files["target"], "-b", "affine",
            "-o", tmp_path / "x.nii.gz", "--transform-out", tmp_path / "x.nii.gz")


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

def _compare(files, out, *extra):
    """compare -b affine on the one target (id "target"), listed in a CSV beside the inputs."""
    listing = files["target"].with_name("targets.csv")
    listing.write_text(f"image,labels,id\n{files['target']},{files['target_seg']},target\n")
    return ["compare", "-b", "affine", "-a", files["atlas"], files["atlas_seg"], "--dataset", "csv", listing,
            "--protocol", "labels", "-o", out, *extra]


def _pairs(path: Path) -> dict[tuple[str, str], list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    pairs: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        pairs.setdefault((row["method"], row["target"]), []).append(row)
    return pairs


def test_compare_resume_redoes_a_pair_cut_mid_row(capsys, files, tmp_path):
    out = tmp_path / "report"
    assert run(capsys, *_compare(files, out))[0] == 0
    results = out / "results.csv"
    whole = _pairs(results)
    text = results.read_text()
    results.write_text(text[: len(text) - 30])  # a crash while writing: the last row is cut
    assert run(capsys, *_compare(files, out))[0] == 0
    again = _pairs(results)
    assert again.keys() == whole.keys()
    for pair, rows in again.items():
        assert [(r["kind"], r["structure"]) for r in rows] == [(r["kind"], r["structure"]) for r in whole[pair]]
        assert all(None not in r.values() and r["status"] == "ok" for r in rows)


def test_compare_refuses_a_results_file_it_did_not_write(capsys, files, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.csv").write_bytes(bytes(range(256)) * 4)
    refused(capsys, tmp_path, "not an atlasreg compare results file", *_compare(files, out))
    (out / "results.csv").write_text("name,score\nx,1\n")
    refused(capsys, tmp_path, "not an atlasreg compare results file", *_compare(files, out))


def test_compare_retries_failed_pairs_unless_told_to_skip_them(capsys, files, tmp_path):
    out = tmp_path / "report"
    assert run(capsys, *_compare(files, out))[0] == 0
    results = out / "results.csv"
    with open(results, newline="") as f:
        header = next(csv.reader(f))
    failed = dict.fromkeys(header, "") | {"method": "affine", "atlas": "atlas", "target": "target", "kind": "mean", "structure": "mean",
                                            "status": "failed", "error": "RuntimeError: boom"}
    with open(results, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerow(failed)
    code, _, err = run(capsys, *_compare(files, out, "--skip-failed"))
    assert code == 1 and "  affine on target: RuntimeError: boom" in err and "1 of 1 pairs failed" in err  # kept, still reported
    assert [r["status"] for r in _pairs(results)[("affine", "target")]] == ["failed"]
    assert run(capsys, *_compare(files, out))[0] == 0
    rows = _pairs(results)[("affine", "target")]
    assert {r["status"] for r in rows} == {"ok"} and rows[-1]["kind"] == "mean"


# --- 5: temporaries of a killed write --------------------------------------------------------------

def test_temporary_of_a_killed_write_is_removed_on_the_next_write(tmp_path, files):
    script = ("import os, signal, sys\nfrom atlasreg.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, tmp_path / "out.nii.gz"])
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".out.nii.gz.*"))
    assert len(left) == 1 and not (tmp_path / "out.nii.gz").exists()
    atlasreg.save(atlasreg.load(files["target"]), tmp_path / "other.nii.gz")
    assert not list(tmp_path.glob(".*")), "the dead process's temporary should be gone"


def test_a_live_writers_temporary_is_kept(tmp_path, files):
    from atlasreg.io import atomic_path

    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        tmp.write_bytes(b"in progress")
        atlasreg.save(atlasreg.load(files["target"]), tmp_path / "b.nii.gz")
        assert tmp.exists()


# --- 6: train arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [("--steps", "0"), ("--batch-size", "-1"), ("--lr", "0"), ("--lr", "nan"),
                                  ("--max-minutes", "-1"), ("--lr-floor", "0"), ("--seed", "-1"),
                                  ("--weight", "smooth=abc"), ("--weight", "smooth=-1")])
def test_train_refuses_arguments_that_train_nothing(capsys, files, tmp_path, flag):
    refused(capsys, tmp_path, flag[0].lstrip("-").replace("-", "_"), "train", "-b", "voxelmorph", "--images", files["target"],
            "--atlas", files["atlas"], files["atlas_seg"], "-o", tmp_path / "model.pt", *flag)


# --- 7: option values out of range ----------------------------------------------------------------

@pytest.mark.parametrize("backend,option,message", [
    ("affine", "levels=nan", "finite"), ("affine", "levels=8,inf", "finite"), ("affine", "levels=0", ">= 0.1 and <= 64"),
    ("affine", "levels=", "at least one"), ("affine", "metric=ssd", "choose one of"),
    ("affine", "rigid_iterations=-5,5", ">= 0"), ("affine", "affine_iterations=99999999999,1", "<= 100000"),
    ("affine", "rigid_iterations=10", "one count per level"), ("affine", "samples=10", ">= 100"),
    ("svf", "window=4", "odd"), ("svf", "regularisation=-1", ">= 0"), ("svf", "iterations=10,10", "one count per level"),
    ("simpleitk", "grid_mm=0", "> 0"), ("simpleitk", "smoothing=-1", ">= 0"), ("simpleitk", "iterations=10,10", "one value per level"),
    ("ants", "iterations=-1,-1", ">= 0"), ("ants", "seed=-3", ">= 0"), ("voxelmorph", "optimize_steps=-3", ">= 0"),
])
def test_backend_options_out_of_range_are_refused(capsys, files, tmp_path, backend, option, message):
    refused(capsys, tmp_path, message, "segment", files["target"], "-a", files["atlas"], files["atlas_seg"], "-b", backend,
            "-O", option, "-o", tmp_path / "out.nii.gz")


@pytest.mark.parametrize("fusion,option", [("weighted", "h=0"), ("weighted", "sigma_mm=-1"), ("staple", "max_iterations=0"),
                                           ("jlf", "radius=-1"), ("jlf", "rho=nan")])
def test_fusion_options_out_of_range_are_refused(capsys, files, tmp_path, fusion, option):
    refused(capsys, tmp_path, "must be", *_segment(files, "-a", files["atlas"], files["atlas_seg"], "-f", fusion, "-F", option,
                                                   "-o", tmp_path / "out.nii.gz"))


def test_optimize_steps_flag_and_synth_seed_are_range_checked(capsys, files, tmp_path):
    refused(capsys, tmp_path, "optimize_steps", *_segment(files, "--optimize-steps", "-3", "-o", tmp_path / "o.nii.gz", backend="voxelmorph"))
    refused(capsys, tmp_path, "--seed", "synth", files["atlas_seg"], "--seed", "-1", "-o", tmp_path / "s.nii.gz")


def test_every_first_party_option_declares_a_range_where_numeric(capsys):
    from atlasreg.registry import registry

    methods = {**registry().backends(), **registry().fusions()}
    for name, (method, _) in methods.items():
        for key, option in method.options.items():
            numeric = isinstance(option.default, (int, float)) and not isinstance(option.default, bool)
            numeric |= isinstance(option.default, tuple)
            if numeric:
                assert option.range_text(), f"{name}: option {key} declares no valid range"
    code, out, _ = run(capsys, "options", "affine")
    assert code == 0 and "levels=8.0,4.0 (>= 0.1 and <= 64)" in out and "rigid_iterations=100,30 (>= 0 and <= 100000)" in out


# --- 8: all-zero images --------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["target", "atlas"])
def test_all_zero_image_is_refused(capsys, files, tmp_path, which):
    atlasreg.save(Volume(np.zeros(SHAPE, np.float32), AFFINE, is_labels=False), files[which])
    refused(capsys, tmp_path, "image is empty (all zero)", *_segment(files, "-o", tmp_path / "out.nii.gz"))


# --- 9: model files ------------------------------------------------------------------------------

def test_model_with_wrong_weight_shapes_names_the_config(capsys, files, tmp_path):
    torch = pytest.importorskip("torch")
    from atlasreg.models import save_model
    from atlasreg.registry import get_backend

    backend = get_backend("voxelmorph")
    small = {"shape": [16, 16, 16], "crop": [16, 16, 16], "enc_channels": [4, 8, 8, 8], "dec_channels": [8, 8, 8, 8, 8, 4, 4]}
    path = save_model(tmp_path / "vm.pt", "voxelmorph", backend.config(small), backend.build_network(backend.config(small)))
    state = torch.load(path, weights_only=True)
    state["config"]["enc_channels"] = [2, 4, 4, 4]  # the config now describes another network than the weights
    torch.save(state, path)
    err = refused(capsys, tmp_path, "do not fit the voxelmorph network", *_segment(files, "--model", path, "-o", tmp_path / "o.nii.gz",
                                                                                           backend="voxelmorph"))
    assert "enc_channels=[2, 4, 4, 4]" in err


def test_model_holding_pickled_objects_is_refused(capsys, files, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "backend": "voxelmorph", "weights": {}, "config": {}, "payload": Path("x")}, path)
    refused(capsys, tmp_path, "refused: the file holds pickled Python objects", *_segment(files, "--model", path, "-o", tmp_path / "o.nii.gz",
                                                                                                   backend="voxelmorph"))


# --- 10: labels beyond int32 ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [2**31, 2**32 + 3])
def test_labels_beyond_int32_are_refused(capsys, files, tmp_path, value):
    array = np.asarray(nib.load(files["target_seg"]).dataobj).astype(np.int64)
    array[array == 3] = value
    nib.save(nib.Nifti1Image(array, AFFINE, dtype=np.int64), tmp_path / "big.nii.gz")
    refused(capsys, tmp_path, "labels above 2147483647", "evaluate", tmp_path / "big.nii.gz", files["target_seg"], "--protocol", "labels")


# --- 11: headers claiming more data than the file holds ---------------------------------------------

def _lying_header(path: Path, shape: tuple[int, int, int]) -> Path:
    """A NIfTI whose header claims ``shape`` (float32) but which holds 4 KB of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + np.ones(1024, np.float32).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("name,shape,message", [("huge.nii", (1000,) * 3, "has only"), ("huge.nii.gz", (1000,) * 3, "cannot hold"),
                                                ("vast.nii.gz", (2000,) * 3, "not a brain image")])
def test_header_claiming_more_data_than_the_file_is_refused_before_reading(capsys, files, tmp_path, name, shape, message):
    target = _lying_header(tmp_path / name, shape)
    refused(capsys, tmp_path, message, "segment", target, "-a", files["atlas"], files["atlas_seg"], "-b", "affine",
            "-o", tmp_path / "out.nii.gz")


# --- 12: output folder not writable, output naming a folder -----------------------------------------

def test_output_naming_a_folder_is_refused(capsys, files, tmp_path):
    folder = tmp_path / "dir.nii.gz"
    folder.mkdir()
    refused(capsys, tmp_path, "is a folder", *_segment(files, "-o", folder))
    refused(capsys, tmp_path, "is a folder", *_segment(files, "-o", tmp_path))


def test_output_folder_not_writable_is_found_before_work(capsys, files, tmp_path):
    folder = unwritable_folder(tmp_path)
    try:
        refused(capsys, tmp_path, "not writable", *_segment(files, "-o", folder / "out.nii.gz"))
        refused(capsys, tmp_path, "not writable", "register", files["atlas"], files["target"], "-b", "affine",
                "-o", tmp_path / "ok.nii.gz", "--transform-out", folder / "field.nii.gz")
        refused(capsys, tmp_path, "not writable", *_compare(files, folder / "report"))
        refused(capsys, tmp_path, "not writable", "train", "-b", "voxelmorph", "--images", files["target"],
                "--atlas", files["atlas"], files["atlas_seg"], "-o", folder / "model.pt")
    finally:
        (tmp_path / "locked").chmod(0o755)


# --- 13: fusion checked with one atlas too ------------------------------------------------------------

def test_fusion_name_and_options_checked_with_one_atlas(capsys, files, tmp_path):
    refused(capsys, tmp_path, "unknown fusion 'no-such-fusion'", *_segment(files, "-f", "no-such-fusion", "-o", tmp_path / "o.nii.gz"))
    refused(capsys, tmp_path, "unknown option bogus", *_segment(files, "-F", "bogus=1", "-o", tmp_path / "o.nii.gz"))


# --- 14: a missing model found before any work ------------------------------------------------------

def test_missing_model_found_before_the_atlas_is_built(capsys, files, tmp_path, monkeypatch):
    import atlasreg.atlases

    def no_atlas(*_args, **_kwargs):
        raise AssertionError("the built-in atlas was built before the options were checked")

    monkeypatch.setattr(atlasreg.atlases, "load_atlas", no_atlas)
    refused(capsys, tmp_path, "neither a declared model name", "segment", files["target"], "-b", "contrastive",
            "--model", "no-such-model", "-o", tmp_path / "o.nii.gz")
    refused(capsys, tmp_path, "neither a declared model name", "segment", files["target"], "-b", "voxelmorph", "--model", tmp_path / "nope.pt",
            "-o", tmp_path / "o.nii.gz")


def test_compare_checks_every_methods_model_before_any_pair(capsys, files, tmp_path):
    out = tmp_path / "report"
    args = _compare(files, out)
    args[args.index("affine")] = "affine,voxelmorph"
    refused(capsys, tmp_path, "neither a declared model name", *args, "--model", f"voxelmorph={tmp_path / 'nope.pt'}")
    assert not out.exists()


# --- 15: Ctrl-C during ants ---------------------------------------------------------------------------

#: Popen arguments for the Ctrl-C tests: SIGINT handled as in a terminal even where the test run
#: inherited it ignored (a shell's background job), and the process in a group of its own, so
#: ``_kill_session`` leaves no busy child behind when a test fails
_INTERRUPTIBLE = {"start_new_session": True, "preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


def _session_alive(pid: int) -> bool:
    """Whether any process of the process group led by ``pid`` is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_session(pid: int) -> None:
    """Kill whatever is left of the process group led by ``pid`` (so a failing test leaves no busy child)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_ctrl_c_stops_a_call_that_holds_the_gil(tmp_path):
    """antspyx holds the GIL for a whole registration, so SIGINT reaches Python only when it returns.
    ``sum(range(10**13))`` behaves alike (hours in C, the GIL held, no signal check): run through
    the ants plugin's run_in_child it stops at once, and no child process is left behind."""
    script = ("import multiprocessing, sys\nfrom atlasreg_plugins.ants.child import run_in_child\nprint('go', flush=True)\n"
              "try:\n    run_in_child(sum, range(10**13))\nexcept KeyboardInterrupt:\n"
              "    print(len(multiprocessing.active_children()), flush=True)\n    sys.exit(130)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, **_INTERRUPTIBLE)
    try:
        assert process.stdout.readline() == "go\n"
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)  # in-process, the sum would run for hours
    finally:
        _kill_session(process.pid)
    assert process.returncode == 130 and out.strip() == "0"


def test_ctrl_c_right_after_the_fork_leaves_no_child(tmp_path):
    """A Ctrl-C that lands between the child's fork and the code that stops it (forced here: the
    parent interrupts itself right after the fork, before multiprocessing knows the child) still
    stops the child."""
    script = ("import multiprocessing.popen_fork as pf, os, signal, sys\n"
              "from atlasreg_plugins.ants.child import run_in_child\n"
              "launch = pf.Popen._launch\n"  # forks; multiprocessing registers the child only after it
              "def launch_then_ctrl_c(self, process_obj):\n    launch(self, process_obj)\n    os.kill(os.getpid(), signal.SIGINT)\n"
              "pf.Popen._launch = launch_then_ctrl_c\n"
              "try:\n    run_in_child(sum, range(10**13))\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, **_INTERRUPTIBLE)
    try:
        assert process.wait(timeout=60) == 130
        deadline = time.monotonic() + 10  # the child is stopped before the parent exits; allow for slow reaping
        while _session_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _session_alive(process.pid), "the child of run_in_child outlived its parent"
    finally:
        _kill_session(process.pid)


def test_ctrl_c_during_ants_exits_cleanly(tmp_path, files):
    """SIGINT while ANTs registers: exit 130, one line, no output, no ANTs scratch folder left."""
    pytest.importorskip("ants")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = [sys.executable, "-m", "atlasreg", "register", files["atlas"], files["target"], "-b", "ants",
               "-O", "transform=SyN", "-O", "iterations=100000,100000,100000", "-o", tmp_path / "out.nii.gz"]
    process = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(scratch)}, stderr=subprocess.PIPE, text=True, **_INTERRUPTIBLE)
    try:
        deadline = time.monotonic() + 120
        while not list(scratch.glob("atlasreg-ants-*")):
            assert process.poll() is None and time.monotonic() < deadline, "ANTs never started"
            time.sleep(0.1)
        time.sleep(1.0)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)  # without the fix ANTs would run its 300000 iterations first
    finally:
        _kill_session(process.pid)
    assert process.returncode == 130
    assert err.strip() == "atlasreg: error: interrupted"
    assert not (tmp_path / "out.nii.gz").exists() and not list(scratch.iterdir())


# --- the one KEY=VALUE parser -----------------------------------------------------------------------

def test_one_key_value_parser_for_every_flag(capsys, files, tmp_path):
    refused(capsys, tmp_path, "expected KEY=VALUE", *_segment(files, "-O", "=3", "-o", tmp_path / "o.nii.gz"))
    refused(capsys, tmp_path, "expected KEY=VALUE", *_segment(files, "-F", "nothing", "-o", tmp_path / "o.nii.gz"))
    args = _compare(files, tmp_path / "report")
    args[args.index("affine")] = "affine:samples"
    refused(capsys, tmp_path, "expected KEY=VALUE", *args)
    refused(capsys, tmp_path, "expected KEY=VALUE", *_compare(files, tmp_path / "report", "--model", "voxelmorph"))
