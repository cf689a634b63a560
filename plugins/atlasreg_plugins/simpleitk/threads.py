"""Run SimpleITK single-threaded, so the same inputs and seed give the same bytes.

ITK's multi-threaded filters and metrics sum per-thread partial results in an order that varies
from run to run: with two threads, four affine registrations of one pair gave four different
transforms, with the sampling seed fixed and with deterministic (regular) sampling alike; with
one thread they were identical. ``ImageRegistrationMethod.SetNumberOfThreads(1)`` is not enough
(its internal filters keep the global default), so the global default is lowered for the call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import SimpleITK as sitk


@contextmanager
def single_threaded() -> Iterator[None]:
    """Every SimpleITK object created inside the block uses one thread; the previous default is restored after."""
    previous = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(previous)
