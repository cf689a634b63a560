"""Logging and progress bars, the same way through the whole package.

Every module logs through the standard :mod:`logging` module, to ``logging.getLogger(__name__)``:
children of the ``atlasreg`` logger. Library code never configures logging (no handler, no level):
an application embedding atlasreg decides what it shows, as for any library. The command line does
it with :func:`configure` (``-v``, ``-q``, ``--log-file``).

Progress bars (tqdm, on stderr) count what takes time: pairs, subjects, optimisation steps. A bar
is drawn only when its caller asks (``progress=True``), stderr is a terminal (no ``\\r`` in log
files) and ``TQDM_DISABLE`` is not set. Optimisation loops deep in the engine draw theirs
only inside :func:`step_progress` (``atlasreg.register(..., progress=True)`` opens one), so a
library call never draws a bar it was not asked for.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from ._version import __version__
from .errors import AtlasregError

LOGGER = "atlasreg"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_steps: ContextVar[bool] = ContextVar("atlasreg_step_progress", default=False)
#: the application's word on bars (the CLI's -q / --no-progress, through :func:`configure`)
_bars = {"allowed": True}


def progress_wanted(requested: bool = True) -> bool:
    """Whether a bar may be drawn: asked for, allowed by the application, stderr a terminal, and no
    ``TQDM_DISABLE`` (tqdm's own switch)."""
    disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(requested and _bars["allowed"] and not disabled and isatty is not None and isatty())


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, leave: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr, drawn only if :func:`progress_wanted` (``enabled``); otherwise silent, still iterable."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_wanted(enabled), leave=leave,
                initial=initial, file=sys.stderr, dynamic_ncols=True)


@contextmanager
def step_progress(enabled: bool = True) -> Iterator[None]:
    """Within the block, optimisation loops (:func:`steps`) draw a bar of their steps (``enabled``
    False: as the enclosing block says, so a study's bars reach the registrations it runs)."""
    token = _steps.set(enabled or _steps.get())
    try:
        yield
    finally:
        _steps.reset(token)


def steps(count: int, desc: str) -> tqdm:
    """``range(count)`` for an optimisation loop, drawn as a passing bar inside :func:`step_progress`."""
    return progress_bar(range(count), total=count, desc=desc, unit="step", enabled=_steps.get(), leave=False)


def close_bars() -> None:
    """Close every open bar (one a failure left open), so what is printed next starts a line of its own."""
    for bar in list(tqdm._instances):
        bar.close()


class _TqdmHandler(logging.StreamHandler):
    """Writes records through ``tqdm.write``, so a log line never cuts an open progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging.StreamHandler: a failing handler must not stop the program
            self.handleError(record)


def configure(verbosity: int = 0, log_file: str | os.PathLike | None = None, progress: bool = True, quiet: bool = False,
              command: str | None = None) -> logging.Logger:
    """The command line's logging: on stderr WARNING and above (``verbosity`` 1, ``-v``: INFO; 2,
    ``-vv``: DEBUG; ``quiet`` (``-q``): errors only, no bars); ``log_file`` gets everything from INFO
    (DEBUG with ``-vv``) with timestamps, appended, starting with ``command``; ``progress``: whether
    bars may be drawn at all. Replaces what an earlier call set up; returns the ``atlasreg`` logger."""
    if verbosity and quiet:
        raise AtlasregError("give -v or -q, not both")
    verbosity = -1 if quiet else verbosity
    _bars["allowed"] = progress and not quiet
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_atlasreg", False):
            logger.removeHandler(handler)
            handler.close()
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(max(-1, min(verbosity, 2)), logging.DEBUG)
    console = _TqdmHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("atlasreg: %(message)s" if verbosity < 2 else "%(name)s %(levelname)s: %(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise AtlasregError(f"--log-file {log_file}: cannot write there ({exc.strerror})") from None
        file_handler.setLevel(min(level, logging.INFO))
        file_handler.setFormatter(logging.Formatter(FORMAT))
        handlers.append(file_handler)
    for handler in handlers:
        handler._atlasreg = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(min(h.level for h in handlers))
    logger.propagate = False
    if command:
        logger.info("atlasreg %s: %s", __version__, command)
    return logger


def internal_error(exc: BaseException) -> str:
    """The one line an unexpected exception ends a command with; its traceback goes to the DEBUG log (``-vv``)."""
    logging.getLogger(LOGGER).debug("internal error", exc_info=exc)
    return f"internal error: {type(exc).__name__}: {exc} (-vv shows the traceback)"
