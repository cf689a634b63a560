"""Learned backends on held-out shared-map subjects: Dice vs affine, with and without instance
optimisation, and inference time (network + warp, no file I/O) next to ANTs in the same run.

    python benchmarks/learned.py --model contrastive=benchmarks/work/contrastive.pt \
        --model voxelmorph=benchmarks/work/voxelmorph.pt [--targets 8,9,10] [--atlas 1] \
        [--optimize-steps 20] [--optimize-lr 1e-3] [-o benchmarks/results/learned.md]

Images come from benchmarks/shared_maps.py (2 mm, skull-stripped, synthesized), the same as
`atlasreg train` saw for subjects 02-07 via `python benchmarks/shared_maps.py benchmarks/work/data 1 ... 10`.
Peak memory is the process's peak RSS (torch, data and all) at the end of the run.
"""

from __future__ import annotations

import sys
import time
from statistics import mean

import click
import torch

import atlasreg
from atlasreg.engine.grid import align_pair, pick_device, working_grid
from atlasreg.metrics import folding_percent
from atlasreg.registry import get_backend

from common import aseg_dice, command_line, header, peak_rss_gib, publish
from shared_maps import subject


@click.command()
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=PATH")
@click.option("--targets", default="8,9,10", show_default=True)
@click.option("--atlas", default=1, show_default=True)
@click.option("--optimize-steps", default=20, show_default=True)
@click.option("--optimize-lr", default=None, type=float, help="Instance optimisation learning rate (default: the backends' own).")
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--output", default=None)
def main(models: tuple[str, ...], targets: str, atlas: int, optimize_steps: int, optimize_lr: float | None, device: str,
         output: str | None) -> None:
    torch.set_num_threads(2)
    device = pick_device(device)
    atlas_img, atlas_lab = subject(atlas)
    numbers = [int(n) for n in targets.split(",")]
    rows: dict[str, list[tuple[float, float]]] = {}
    folding: dict[str, list[float]] = {}
    for n in numbers:
        target_img, target_lab = subject(n)
        start = time.perf_counter()
        affine = atlasreg.register(atlas_img, target_img, backend="affine")
        rows.setdefault("affine", []).append((_dice(affine, atlas_lab, target_lab), time.perf_counter() - start))
        start = time.perf_counter()
        ants = atlasreg.register(atlas_img, target_img, backend="ants", options={"preset": "fast"})
        rows.setdefault("ants fast", []).append((_dice(ants, atlas_lab, target_lab), time.perf_counter() - start))
        for spec in models:
            name, path = spec.split("=", 1)
            backend = get_backend(name)
            network, config = backend.load_network(path, device)
            pair = align_pair(atlas_img, target_img, working_grid(target_img, config["spacing"], tuple(config["shape"])), matrix=affine.matrix)
            for steps in (0, optimize_steps) if optimize_steps else (0,):
                start = time.perf_counter()
                lr = optimize_lr or backend.options["optimize_lr"].default
                transform = backend.predict(network, config, pair, target_img, device, steps, lr)
                warped = transform.warp_labels(atlas_lab)
                seconds = time.perf_counter() - start
                label = f"{name}" + (f" + {steps} optimisation steps (lr {lr:g})" if steps else "")
                score = aseg_dice(warped, target_lab)
                rows.setdefault(label, []).append((score, seconds))
                folding.setdefault(label, []).append(folding_percent(transform.jacobian_determinant(), target_lab.array > 0))
                print(f"{atlas:02d}->{n:02d} {label:<40} Dice {score:.3f} {seconds:6.2f} s", file=sys.stderr)
    base = mean(d for d, _ in rows["affine"])
    ants_s = mean(s for _, s in rows["ants fast"])
    command = command_line()
    lines = [header(command), f"- device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             f"Atlas {atlas:02d} → targets {', '.join(f'{n:02d}' for n in numbers)}, mean Dice over the 28 aseg structures.",
             "Seconds: affine and ANTs = whole registration; learned rows = network (+ instance optimisation) + warp of the atlas labels, "
             "after the affine stage (add the affine row's seconds for the whole pipeline).", "",
             "| method | mean Dice | Δ vs affine | s / pair | × ANTs fast time | % folding (brain) |", "|---|---|---|---|---|---|"]
    for label, values in rows.items():
        d, s = mean(v[0] for v in values), mean(v[1] for v in values)
        fold = f"{mean(folding[label]):.3f}" if label in folding else "–"
        lines.append(f"| {label} | {d:.3f} | {d - base:+.3f} | {s:.2f} | {s / ants_s:.2f} | {fold} |")
    peak = peak_rss_gib()
    lines += ["", f"Peak RSS of the whole benchmark process: {peak:.2f} GiB."]
    publish(lines, output)


def _dice(transform, atlas_labels, target_labels) -> float:
    return aseg_dice(transform.warp_labels(atlas_labels), target_labels)


if __name__ == "__main__":
    main()
