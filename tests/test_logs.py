"""Logging and progress bars (issue 19): the standard logging module, bars only where they help."""

import ast
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

import atlasreg
from atlasreg.logs import configure, progress_bar, progress_wanted
from atlasreg.volume import Volume
from conftest import blob_labels, image_from_labels

PACKAGE = Path(atlasreg.__file__).parent
PLUGINS = PACKAGE.parent / "plugins" / "atlasreg_plugins"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch) -> Terminal:
    """stderr replaced by a terminal (in the test itself: pytest sets its own stderr after the fixtures)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_bar_drawn_on_a_terminal_only_and_when_not_disabled(monkeypatch):
    terminal = on_terminal(monkeypatch)
    assert list(progress_bar(range(3), desc="pairs", unit="pair")) == [0, 1, 2]
    assert "pairs" in terminal.getvalue() and "3/3" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    list(progress_bar(range(3), desc="pairs", enabled=False))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_wanted()
    list(progress_bar(range(3), desc="pairs"))
    assert terminal.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_wanted()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe: no bar, no \r
    assert not progress_wanted()


def _pair():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed, moving = blob_labels(), blob_labels(shift=(1, -1, 0))
    return (Volume(image_from_labels(moving, 1), affine, is_labels=False), Volume(image_from_labels(fixed, 2), affine, is_labels=False))


def test_register_counts_optimisation_steps_when_asked(monkeypatch):
    moving, fixed = _pair()
    terminal = on_terminal(monkeypatch)
    options = {"rigid_iterations": (5, 3), "affine_iterations": (4, 2)}
    atlasreg.register(moving, fixed, backend="affine", options=options, progress=True)
    drawn = terminal.getvalue()
    # one passing bar per stage and level, counting its steps
    assert all(text in drawn for text in ("rigid 8 mm", "/5 ", "rigid 4 mm", "/3 ", "affine 8 mm", "/4 ", "affine 4 mm", "/2 ")), drawn
    terminal.seek(0)
    terminal.truncate()
    atlasreg.register(moving, fixed, backend="affine", options=options)  # a library call draws nothing unasked
    assert terminal.getvalue() == ""
    from atlasreg.logs import step_progress

    with step_progress(True):  # a study's bars reach the registrations it runs, whatever they say
        atlasreg.register(moving, fixed, backend="affine", options=options, progress=False)
    assert "rigid 8 mm" in terminal.getvalue()


def test_library_never_configures_logging():
    """Only atlasreg.logs.configure (called by the CLI) adds handlers or sets levels; modules log to children of 'atlasreg'."""
    configuring = {"basicConfig", "addHandler", "setLevel", "dictConfig", "fileConfig"}
    for path in [*PACKAGE.rglob("*.py"), *PLUGINS.rglob("*.py")]:
        if path == PACKAGE / "logs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in configuring:
                pytest.fail(f"{path} configures logging ({node.attr})")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
                assert isinstance(node.args[0], ast.Name) and node.args[0].id == "__name__", path


def test_configure_levels_and_log_file(tmp_path, capsys):
    log_file = tmp_path / "run.log"
    logger = logging.getLogger("atlasreg.test")
    try:
        configure(0, log_file)
        logger.info("an info line")
        logger.warning("a warning")
        configure(-1)
        logger.warning("quiet warning")
        logger.error("an error")
        configure(2)
        logger.debug("a debug line")
    finally:
        configure(0)
    err = capsys.readouterr().err
    assert "a warning" in err and "an info line" not in err and "quiet warning" not in err and "an error" in err and "a debug line" in err
    text = log_file.read_text()
    assert "INFO" in text and "an info line" in text and "a warning" in text and "quiet warning" not in text


def _cli(monkeypatch, *args, terminal: bool = False, tqdm_disable: bool = False) -> tuple[int, str]:
    """Run the CLI in-process with stderr captured (a terminal if asked); (exit code, stderr)."""
    from atlasreg.cli import main

    stream = on_terminal(monkeypatch) if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    if tqdm_disable:
        monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        configure(0)  # as a fresh process would start
    return code, stream.getvalue()


@pytest.fixture
def pair_files(tmp_path):
    moving, fixed = _pair()
    return atlasreg.save(moving, tmp_path / "moving.nii.gz"), atlasreg.save(fixed, tmp_path / "fixed.nii.gz")


def test_cli_verbosity_log_file_and_progress_switches(monkeypatch, tmp_path, pair_files):
    quick = ["-b", "affine", "-O", "rigid_iterations=5,3", "-O", "affine_iterations=4,2"]
    log_file = tmp_path / "run.log"
    code, err = _cli(monkeypatch, "-v", "--log-file", log_file, "register", *pair_files, *quick, "-o", tmp_path / "a.nii.gz", terminal=True)
    assert code == 0, err
    assert "registered with affine in" in err and "rigid 8 mm" in err, err  # -v: what each step took; a terminal: bars
    text = log_file.read_text()
    assert f"atlasreg {atlasreg.__version__}: atlasreg -v --log-file {log_file} register" in text and "registered with affine" in text
    assert "\r" not in text  # bars never reach the log
    for switch in (["--no-progress"], ["-q"]):
        code, err = _cli(monkeypatch, *switch, "register", *pair_files, *quick, "-o", tmp_path / f"{switch[0]}.nii.gz", terminal=True)
        assert code == 0 and "rigid 8 mm" not in err and "registered with" not in err, err
    code, err = _cli(monkeypatch, "register", *pair_files, *quick, "-o", tmp_path / "b.nii.gz", terminal=True, tqdm_disable=True)
    assert code == 0 and "rigid 8 mm" not in err, err
    code, err = _cli(monkeypatch, "-v", "-q", "backends")
    assert code == 1 and "give -v or -q, not both" in err


def test_cli_refuses_an_option_given_twice_that_takes_one_value(monkeypatch, tmp_path, pair_files):
    code, err = _cli(monkeypatch, "register", *pair_files, "-b", "affine", "-b", "svf", "-o", tmp_path / "x.nii.gz")
    assert code == 2 and "-b / --backend given twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.nii.gz").exists()


def test_internal_error_traceback_only_with_vv(monkeypatch):
    def broken():
        raise RuntimeError("something unexpected")

    monkeypatch.setattr("atlasreg.cli_listings.backend_infos", broken)
    code, err = _cli(monkeypatch, "backends")
    assert code == 1 and err.strip() == "atlasreg: error: internal error: RuntimeError: something unexpected (-vv shows the traceback)"
    code, err = _cli(monkeypatch, "-vv", "backends")
    assert code == 1 and "Traceback (most recent call last)" in err and err.strip().endswith("(-vv shows the traceback)"), err


def test_simpleitk_demons_counts_its_iterations(monkeypatch):
    pytest.importorskip("SimpleITK")
    moving, fixed = _pair()
    terminal = on_terminal(monkeypatch)
    atlasreg.register(moving, fixed, backend="simpleitk", options={"iterations": (6, 4, 2)}, progress=True)
    assert all(f"demons, 1/{shrink} size" in terminal.getvalue() for shrink in (4, 2, 1)), terminal.getvalue()
