"""Seconds per pair and peak memory of every backend at 2 mm and 1 mm on this machine's CPU, and
the throughput of batch segmentation, each measured in a fresh process so peak memory is its own.

    python benchmarks/speed.py [--contrastive benchmarks/work/gpu/all.pt] \
        [--voxelmorph benchmarks/work/gpu/voxelmorph.pt] [-o benchmarks/results/speed-cpu.md]

Pair: atlas subject01 -> subject08, synthesized from the shared label maps at 2 mm and at 1 mm
(benchmarks/shared_maps.py; 1 mm files are written to benchmarks/work/data1mm once). Seconds:
`atlasreg.register` + label warp, no file I/O, first call in the process after the plugins
are imported (model loading included). Peak RSS: the process's peak, imports and data
included. Batch: one process segments 08, 09, 10 one after another; pairs per minute.
ANTs `quality` at 1 mm is left out (about half an hour per pair here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from common import CLASSICAL, LEARNED, WORK, aseg_dice, command_line, header, peak_rss_gib, publish, subject_files

METHODS = {**CLASSICAL, **LEARNED}


def files(n: int, spacing: float) -> tuple[Path, Path]:
    """(image, labels) of subject n at spacing mm, written once."""
    return subject_files(n, WORK / ("data" if spacing == 2.0 else f"data{spacing:g}mm"), spacing)


def measure(method: str, spacing: float, targets: list[int], models: dict[str, str]) -> dict:
    """Runs in the child process: register + warp for each target; seconds, Dice, own peak RSS."""
    import atlasreg

    backend, options = METHODS[method]
    options = {**options, **({"model": models[backend]} if backend in models else {})}
    atlas_image, atlas_labels = (atlasreg.load(p, labels=k == 1) for k, p in enumerate(files(1, spacing)))
    loaded = [(atlasreg.load(files(n, spacing)[0]), atlasreg.load(files(n, spacing)[1], labels=True)) for n in targets]
    from atlasreg.registry import get_backend

    get_backend(backend)  # plugin imports (ANTs, SimpleITK, torch) happen here, outside the timing
    rss_before = peak_rss_gib()
    seconds, dice = [], []
    for image, truth in loaded:
        start = time.perf_counter()
        warped = atlasreg.register(atlas_image, image, backend=backend, options=options).warp_labels(atlas_labels)
        seconds.append(time.perf_counter() - start)
        dice.append(aseg_dice(warped, truth))
    return {"seconds": seconds, "dice": dice, "rss_before_gib": rss_before,
            "peak_rss_gib": peak_rss_gib()}


def child(method: str, spacing: float, targets: list[int], models: dict[str, str]) -> dict:
    args = [sys.executable, __file__, "--child", json.dumps([method, spacing, targets, models])]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{method} at {spacing} mm failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--contrastive", default=str(WORK / "gpu" / "all.pt"), show_default=True)
@click.option("--voxelmorph", default=str(WORK / "gpu" / "voxelmorph.pt"), show_default=True)
@click.option("--child", "child_args", hidden=True)
@click.option("-o", "--output", default=None)
def main(contrastive: str, voxelmorph: str, child_args: str | None, output: str | None) -> None:
    if child_args:
        print(json.dumps(measure(*json.loads(child_args))))
        return
    import torch

    models = {"contrastive": contrastive, "voxelmorph": voxelmorph}
    for spacing in (2.0, 1.0):
        for n in (1, 8):
            files(n, spacing)
    for n in (9, 10):
        files(n, 2.0)
    single: dict[tuple[str, float], dict] = {}
    for spacing in (2.0, 1.0):
        for method in METHODS:
            if method == "ants quality" and spacing == 1.0:
                continue
            single[method, spacing] = child(method, spacing, [8], models)
            print(method, spacing, single[method, spacing], file=sys.stderr)
    batch = {method: child(method, 2.0, [8, 9, 10], models) for method in METHODS if method != "ants quality"}
    lines = [header(command_line()), f"- torch {torch.__version__}, {torch.get_num_threads()} threads; learned backends on the CPU", "",
             "Atlas 01 → target 08. s = `register` + label warp in a fresh process after plugin imports (first call: model "
             "loading and, for learned backends, the affine stage included); × = ratio to ANTs fast at the same resolution, "
             "same run. Peak RSS: the process's own peak (VmHWM), imports and data included.", "",
             "| method | 2 mm s | 2 mm × ANTs fast | 2 mm peak RSS GiB | 1 mm s | 1 mm × ANTs fast | 1 mm peak RSS GiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method in METHODS:
        cells = []
        for spacing in (2.0, 1.0):
            r = single.get((method, spacing))
            ref = single[("ants fast", spacing)]["seconds"][0]
            cells += [f"{r['seconds'][0]:.1f}", f"{r['seconds'][0] / ref:.2f}", f"{r['peak_rss_gib']:.2f}"] if r else ["not run"] * 3
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Batch segmentation, one process, targets 08, 09, 10 at 2 mm:", "",
              "| method | s per target (1st, 2nd, 3rd) | pairs / minute | mean Dice |", "|---|---|---:|---:|"]
    for method, r in batch.items():
        per_minute = 60 * len(r["seconds"]) / sum(r["seconds"])
        lines.append(f"| {method} | {', '.join(f'{s:.1f}' for s in r['seconds'])} | {per_minute:.1f} | {sum(r['dice']) / len(r['dice']):.3f} |")
    publish(lines, output)


if __name__ == "__main__":
    main()
