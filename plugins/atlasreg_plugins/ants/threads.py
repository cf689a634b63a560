"""ANTs runs single-threaded unless the user says otherwise, so the same inputs and seed give the same bytes.

ANTs' Mattes mutual information sums per-thread partial results in a varying order: with two
threads, three SyN registrations of one pair with a fixed seed gave three different fields;
with one thread they were identical. ANTs' ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
once, at its first threaded computation in the process, so the plugin sets it where it imports
antspyx (:func:`import_ants`, before any ANTs call), not when atlasreg loads the plugin: a process
that never runs ANTs keeps its environment as it was. A value already in the environment is kept:
more threads are faster but not reproducible, and the backends listing says so.
"""

from __future__ import annotations

import os

THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def import_ants():
    """antspyx, its ITK single-threaded unless the environment already says how many threads."""
    os.environ.setdefault(THREADS_VARIABLE, "1")
    import ants

    return ants


def reproducible() -> bool:
    """Whether ANTs runs single-threaded here (the user may have asked for more threads)."""
    return os.environ.get(THREADS_VARIABLE, "1").strip() == "1"
