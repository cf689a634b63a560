"""How long Ctrl-C takes to stop `atlasreg register -b ants`, and what running ANTs in a child costs.

Synthesizes a 2 mm pair from two shared label maps, starts the CLI, sends SIGINT a few seconds
into the ANTs registration (once its scratch folder exists) and times the exit. Then registers
the pair once through the child process and once in-process, for the overhead.
Run against another checkout by setting PYTHONPATH to its atlasreg and plugins folders.

    python benchmarks/interrupt.py --labels /work/shared/data/labelmaps
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


def make_pair(labels: Path, folder: Path) -> tuple[Path, Path]:
    from atlasreg.datasets import resample_to_spacing
    from atlasreg.io import load, save
    from atlasreg.synth import synthesize

    paths = []
    for seed, subject in enumerate(("subject01", "subject02")):
        image = synthesize(load(labels / f"{subject}.nii.gz", labels=True), seed=seed)
        paths.append(save(resample_to_spacing(image, 2.0), folder / f"{subject}.nii.gz"))
    return paths[0], paths[1]


def interrupt_seconds(moving: Path, fixed: Path, folder: Path, wait: float) -> tuple[float, int, str]:
    scratch = Path(tempfile.mkdtemp(dir=folder))
    command = [sys.executable, "-m", "atlasreg", "register", str(moving), str(fixed), "-b", "ants", "-O", "preset=fast",
               "-o", str(folder / "out.nii.gz")]
    process = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(scratch)}, stderr=subprocess.PIPE, text=True)
    while not list(scratch.glob("atlasreg-ants-*")):
        if process.poll() is not None:
            raise SystemExit(f"ended before ANTs started: {process.stderr.read()}")
        time.sleep(0.1)
    time.sleep(wait)
    start = time.perf_counter()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate()
    return time.perf_counter() - start, process.returncode, err.strip()


def registration_seconds(moving: Path, fixed: Path) -> tuple[float, float]:
    """(through the child process, in-process) seconds of one ants fast registration."""
    import atlasreg_plugins.ants.child as child
    from atlasreg.pipeline import as_image
    from atlasreg.registry import get_backend

    backend = get_backend("ants")
    options = backend.resolve_options({"preset": "fast"})
    pair = as_image(moving), as_image(fixed)
    start = time.perf_counter()
    backend.register(*pair, **options)
    forked = time.perf_counter() - start
    child.multiprocessing.get_all_start_methods = lambda: ["spawn"]  # run_in_child then calls in-process
    start = time.perf_counter()
    backend.register(*pair, **options)
    return forked, time.perf_counter() - start


@click.command(help=__doc__.splitlines()[0])
@click.option("--labels", type=click.Path(path_type=Path), required=True, help="folder with subject01/02.nii.gz label maps")
@click.option("--wait", type=float, default=5.0, show_default=True, help="seconds into the registration before SIGINT")
@click.option("--no-overhead", is_flag=True, help="only the interrupt (e.g. against an older checkout)")
def main(labels: Path, wait: float, no_overhead: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="atlasreg-interrupt-"))
    moving, fixed = make_pair(labels, folder)
    seconds, code, err = interrupt_seconds(moving, fixed, folder, wait)
    print(f"SIGINT -> exit: {seconds:.1f} s (exit {code}, stderr {err[-80:]!r})")
    if not no_overhead:
        forked, in_process = registration_seconds(moving, fixed)
        print(f"ants fast, one 2 mm pair: {forked:.1f} s in a child, {in_process:.1f} s in-process ({forked / in_process:.2f}x)")


if __name__ == "__main__":
    main()
