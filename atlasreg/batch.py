"""Many independent tasks, one after another, in parallel on this machine, or on a Dask cluster.

The runner behind :func:`atlasreg.segment_many`, ``atlasreg bids`` and ``atlasreg compare``:
``work(task, *shared)`` runs once per task; an exception costs that task only (it comes back as an
:class:`Outcome` with the error) and the others go on. Outcomes are yielded as tasks finish, so the
caller writes each result at once and a rerun can skip what is done (resume is the caller's: it
knows what "done" means).

- ``jobs=1``: in this process.
- ``jobs=N``: a ``concurrent.futures.ProcessPoolExecutor`` of N fresh (spawned) processes, each
  limited to ``threads`` threads (default: cores // N) so that N x threads <= cores; ``shared`` (the
  atlases, say) is sent to each worker once.
- ``client``: a ``dask.distributed.Client`` (a remote scheduler or a ``LocalCluster``); ``shared`` is
  scattered to every worker once, each task limits its threads to the worker's share of its cores.
  ``DaskLocal(N)`` instead: a ``LocalCluster`` made for the run, of at most N workers (never more
  than the tasks), with its scratch space in the caller's work folder, removed at the end.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import AtlasregError
from .logs import progress_bar, step_progress

# ITK's own variable (ANTs reads it) is left alone: the ITK backends register single-threaded for
# reproducibility (their plugins see to it, SimpleITK's around each registration whatever its global
# default), so more cores go to more jobs, not more threads per registration.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Outcome:
    """A finished task: its result, or the one-line error that stopped it."""

    task: Any
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class DaskLocal:
    """A Dask ``LocalCluster`` that :func:`run_tasks` starts for its tasks: ``workers`` single-threaded
    worker processes at most (fewer when there are fewer tasks). Refused where Dask is not installed,
    so a run asking for it fails before any work."""

    workers: int

    def __post_init__(self) -> None:
        _distributed()


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """``threads`` if given, else an equal share of the cores (at least 1) for each of ``jobs`` jobs."""
    if jobs < 1:
        raise AtlasregError(f"--jobs {jobs}: must be at least 1")
    if threads is not None and threads < 1:
        raise AtlasregError(f"--threads {threads}: must be at least 1")
    return threads or max(1, cores() // jobs)


def limit_threads(threads: int) -> None:
    """Cap the threads of torch, BLAS/OpenMP and SimpleITK's filters in this process.

    torch reads its variable when first used, so this binds fully in a fresh worker; in a process
    that already loaded torch or SimpleITK their defaults are set directly as well.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS when imported
        sys.modules["torch"].set_num_threads(threads)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject_SetGlobalDefaultNumberOfThreads(threads)


def one_line(exc: BaseException) -> str:
    """An exception as one line for a table or a log: the message of ours, the type too for others."""
    text = str(exc) if isinstance(exc, AtlasregError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


def _guarded(work: Callable[..., Any], task: Any, shared: Sequence[Any]) -> Outcome:
    try:
        return Outcome(task, work(task, *shared))
    except Exception as exc:  # one task's failure is reported, never fatal to the others
        return Outcome(task, error=one_line(exc))


_worker_shared: tuple[Any, ...] = ()


def _start_worker(threads: int, shared: tuple[Any, ...]) -> None:
    global _worker_shared
    limit_threads(threads)
    _worker_shared = shared


def _in_worker(work: Callable[..., Any], task: Any) -> Outcome:
    return _guarded(work, task, _worker_shared)


def _in_dask_worker(work: Callable[..., Any], task: Any, threads: int | dict[str, int], *shared: Any) -> Outcome:
    """``threads``: a number, or per host the Dask threads it runs (a task gets cores / that)."""
    if isinstance(threads, dict):
        from distributed import get_worker

        threads = max(1, cores() // threads.get(get_worker().address.rsplit(":", 1)[0], 1))
    limit_threads(threads)
    return _guarded(work, task, shared)


def _dask_threads_per_host(client) -> dict[str, int]:
    """Dask worker threads per host address (``tcp://10.0.0.1``): tasks running at once there."""
    per_host: dict[str, int] = {}
    for address, nthreads in client.nthreads().items():
        host = address.rsplit(":", 1)[0]
        per_host[host] = per_host.get(host, 0) + nthreads
    return per_host


def run_tasks(
    work: Callable[..., Any],
    tasks: Sequence[Any],
    shared: Sequence[Any] = (),
    jobs: int = 1,
    threads: int | None = None,
    client: Any = None,
    desc: str = "tasks",
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
    unit: str = "task",
) -> Iterator[Outcome]:
    """Run ``work(task, *shared)`` for every task; yield each Outcome as it finishes.

    ``work`` must be a module-level function (it is sent to other processes by reference).
    ``progress``: a bar of the tasks on a terminal, and in this process (``jobs=1``) one of each
    task's optimisation steps below it (see :mod:`atlasreg.logs`).
    ``work_dir``: the run's output folder, where a ``DaskLocal`` cluster keeps its scratch space
    (never the system's temporary folder).
    """
    if client is None:
        threads = threads_per_job(jobs, threads)
    elif threads is not None and threads < 1:
        raise AtlasregError(f"--threads {threads}: must be at least 1")
    with progress_bar(total=len(tasks), desc=desc, unit=unit, enabled=progress and bool(tasks)) as bar:
        for outcome in _outcomes(work, list(tasks), tuple(shared), jobs, threads, client, work_dir, progress):
            bar.update(1)
            yield outcome


def _outcomes(work, tasks: list, shared: tuple, jobs: int, threads: int | None, client, work_dir, progress: bool) -> Iterator[Outcome]:
    if not tasks:
        return
    if isinstance(client, DaskLocal):
        with _local_cluster(min(client.workers, len(tasks)), work_dir) as local:
            yield from _outcomes(work, tasks, shared, jobs, threads, local, work_dir, progress)
        return
    if client is not None:
        from distributed import as_completed

        scattered = client.scatter(list(shared), broadcast=True) if shared else []
        share = threads or _dask_threads_per_host(client)
        futures = [client.submit(_in_dask_worker, work, task, share, *scattered, pure=False) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
        return
    if jobs == 1:
        if threads != cores():
            limit_threads(threads)
        for task in tasks:
            with step_progress(progress):
                outcome = _guarded(work, task, shared)
            yield outcome
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process already running torch/ITK threads
    with ProcessPoolExecutor(min(jobs, len(tasks)), context, initializer=_start_worker, initargs=(threads, shared)) as pool:
        pending = {pool.submit(_in_worker, work, task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def _distributed():
    try:
        import distributed
    except ImportError:
        raise AtlasregError("Dask is not installed: pip install 'atlasreg[dask]'") from None
    return distributed


def dask_client(scheduler: str):
    """A ``dask.distributed.Client`` connected to ``scheduler`` (an address such as tcp://host:8786).

    Workers of an existing cluster must not be daemonic for the ANTs backend (it runs in a child
    process): start them with DASK_DISTRIBUTED__WORKER__DAEMON=False.
    """
    Client = _distributed().Client
    try:
        return Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise AtlasregError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


@contextmanager
def _local_cluster(workers: int, work_dir: str | os.PathLike | None) -> Iterator[Any]:
    """A client of a new ``LocalCluster`` of ``workers`` single-threaded worker processes whose
    scratch space is a hidden folder of ``work_dir`` (default: the current folder), removed after."""
    distributed = _distributed()
    import dask

    with tempfile.TemporaryDirectory(prefix=".atlasreg-dask-", dir=Path(work_dir or "."), ignore_cleanup_errors=True) as scratch:
        # Non-daemonic workers: a backend may start a child process (ANTs runs in one, so Ctrl-C stops it).
        with dask.config.set({"distributed.worker.daemon": False, "temporary-directory": scratch}):
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                          local_directory=scratch, silence_logs=logging.ERROR) as cluster:  # no start-up chatter
                with distributed.Client(cluster) as client:
                    yield client
