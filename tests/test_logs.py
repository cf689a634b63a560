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
