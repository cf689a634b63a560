"""Throughput of whole-study segmentation (subjects per hour) with --jobs 1, --jobs 2 and a Dask
LocalCluster of 2 workers, for the affine and ANTs fast backends, and peak memory per worker.

    python benchmarks/cohort.py [--targets 2-7] [--repeats 2] [-o benchmarks/results/cohort.md]

Study: atlas subject01 -> targets (default 02..07, not the held-out 08-10), synthesized from the
shared label maps at 2 mm (benchmarks/shared_maps.py). Each configuration is one `atlasreg
segment TARGET_DIR -o OUT` command in a fresh process, timed from launch to exit (imports, atlas
loading, worker start-up, QC figures and the HTML index included). Peak memory per worker: the
largest peak RSS a worker process reported in its subjects' records (for --jobs 1 the one process).
CPU seconds: user + system time of the command and all its processes (workers, Dask nanny and
scheduler), per subject: the cost of the machinery, which CPU contention from other jobs distorts
less than wall time.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from common import RESULTS, WORK, header, subject_files

BACKENDS = {"affine": ["-b", "affine"], "ants fast": ["-b", "ants", "-O", "preset=fast"]}
MODES = {"--jobs 1": ["--jobs", "1"], "--jobs 2": ["--jobs", "2"], "Dask LocalCluster, 2 workers": ["--dask", "--jobs", "2"]}


def study(work: Path, numbers: list[int]) -> tuple[Path, Path, Path]:
    """(atlas image, atlas labels, folder of target images), written once."""
    targets = work / f"targets-{numbers[0]:02d}-{numbers[-1]:02d}"
    targets.mkdir(parents=True, exist_ok=True)
    atlas = subject_files(1, work / "data")
    for n in numbers:
        image, _ = subject_files(n, work / "data")
        if n != 1 and not (targets / image.name).exists():
            shutil.copy(image, targets / image.name)
    return *atlas, targets


def run(atlas: tuple[Path, Path], targets: Path, out: Path, args: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "atlasreg", "segment", str(targets), "-a", str(atlas[0]), str(atlas[1]), "-o", str(out), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every process it started, once reaped
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*_seg.json"))]
    return {"wall_s": wall, "cpu_s": cpu, "subjects": len(records), "per_hour": len(records) / wall * 3600,
            "mean_subject_s": sum(r["seconds"] for r in records) / len(records),
            "peak_worker_mb": max(r["peak_rss_mb"] for r in records)}


def _mean(results: list[dict]) -> dict:
    """Throughput and seconds averaged over rounds; peak memory the largest seen."""
    wall = sum(r["wall_s"] for r in results) / len(results)
    return {"wall_s": wall, "per_hour": results[0]["subjects"] / wall * 3600,
            "cpu_per_subject_s": sum(r["cpu_s"] / r["subjects"] for r in results) / len(results),
            "mean_subject_s": sum(r["mean_subject_s"] for r in results) / len(results),
            "peak_worker_mb": max(r["peak_worker_mb"] for r in results)}


@click.command()
@click.option("--targets", "span", default="2-7", show_default=True, help="Target subjects FIRST-LAST.")
@click.option("--work", type=click.Path(path_type=Path), default=WORK / "cohort", show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Rounds over every configuration.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=RESULTS / "cohort.md", show_default=True)
def main(span: str, work: Path, repeats: int, output: Path) -> None:
    first, last = map(int, span.split("-"))
    numbers = list(range(first, last + 1))
    image, labels, targets = study(work, numbers)
    lines = [header(f"python benchmarks/cohort.py --targets {span} --repeats {repeats}"), "",
             f"{len(numbers)} targets (subjects {first:02d}-{last:02d}), atlas subject01, 2 mm; wall time of the whole command.", "",
             "| backend | mode | wall s (each round) | subjects / hour (mean) | vs --jobs 1 | vs --jobs 2 | CPU s / subject (all processes) | mean s / subject (in worker) | peak RSS per worker MiB (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(repeats):  # rounds interleave the configurations, so load drifts hit them alike
        for backend, backend_args in BACKENDS.items():
            for mode, mode_args in MODES.items():
                result = run((image, labels), targets, work / "out" / f"{backend}-{mode}".replace(" ", "_"), backend_args + mode_args)
                runs.setdefault((backend, mode), []).append(result)
                print(f"round {round_ + 1}: {backend} | {mode} | {result['wall_s']:.1f} s", flush=True)
    results = {key: _mean(values) for key, values in runs.items()}
    for (backend, mode), result in results.items():
        base1, base2 = results[(backend, "--jobs 1")], results[(backend, "--jobs 2")]
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs[(backend, mode)])
        lines.append(f"| {backend} | {mode} | {walls} | {result['per_hour']:.0f} | "
                     f"{result['per_hour'] / base1['per_hour']:.2f}x | {result['per_hour'] / base2['per_hour']:.2f}x | "
                     f"{result['cpu_per_subject_s']:.1f} | {result['mean_subject_s']:.1f} | {result['peak_worker_mb']:.0f} |")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    (output.with_suffix(".json")).write_text(json.dumps({f"{b} | {m}": r for (b, m), r in runs.items()}, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
