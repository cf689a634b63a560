"""Ctrl-C during an ANTs registration (issue 10): the CLI stops promptly, in one line, and leaves no
child process, output or scratch folder behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import case_files


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


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
