"""What reproducibility costs: seconds per pair single-threaded (atlasreg's default, byte-identical
runs) against two ITK threads (faster where ITK parallelises, not reproducible), and whether
repeated runs in one process gave identical transforms.

    python benchmarks/determinism.py [--repeats 3] [-o benchmarks/results/determinism.md]

Pair: atlas subject01 -> subject02 (training subjects; only seconds are measured), synthesized
at 2 mm (benchmarks/shared_maps.py). Each thread count runs in its own process, because ANTs'
ITK reads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once per process. With two threads the
SimpleITK backends' single-threading is switched off for the measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import click

from common import CLASSICAL, RESULTS, publish

METHODS = {label: CLASSICAL[label] for label in ("affine", "simpleitk", "ants fast")}


def measure(threads: int, repeats: int) -> dict:
    """Runs in the child: each method `repeats` times on one pair; seconds and distinct results."""
    import atlasreg
    from speed import files

    if threads > 1:  # let SimpleITK keep the global default (set from the environment) instead of one thread
        import SimpleITK as sitk

        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads = lambda n: None
    atlas_image = atlasreg.load(files(1, 2.0)[0])
    target = atlasreg.load(files(2, 2.0)[0])
    rows = {}
    for label, (backend, options) in METHODS.items():
        seconds, digests = [], set()
        for _ in range(repeats):
            started = time.perf_counter()
            transform = atlasreg.register(atlas_image, target, backend=backend, options=options)
            seconds.append(time.perf_counter() - started)
            field = transform.field.tobytes() if transform.field is not None else b""
            digests.add(hashlib.sha256(transform.matrix.tobytes() + field).hexdigest())
        rows[label] = {"seconds": sorted(seconds)[len(seconds) // 2], "distinct": len(digests)}
    return rows


@click.command()
@click.option("--repeats", default=3, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=str(RESULTS / "determinism.md"), show_default=True)
@click.option("--child", type=int, hidden=True)
def main(repeats: int, output: str, child: int | None) -> None:
    if child is not None:
        print(json.dumps(measure(child, repeats)))
        return
    results = {}
    for threads in (1, 2):
        env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
        done = subprocess.run([sys.executable, __file__, "--child", str(threads), "--repeats", str(repeats)],
                              capture_output=True, text=True, env=env, check=True)
        results[threads] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [
        f"| method | s / pair, 1 thread | distinct results in {repeats} runs | s / pair, 2 threads | distinct results in {repeats} runs | 1 thread / 2 threads |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in METHODS:
        one, two = results[1][label], results[2][label]
        lines.append(f"| {label} | {one['seconds']:.1f} | {one['distinct']} | {two['seconds']:.1f} | {two['distinct']} | "
                     f"{one['seconds'] / two['seconds']:.2f} |")
    publish(lines, output)


if __name__ == "__main__":
    main()
