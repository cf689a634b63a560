"""Inference time and memory of the learned backends, split into its parts, on CPU or GPU; on a GPU
also how far its output is from the CPU's for the same model and pair.

    python benchmarks/inference.py --model contrastive=benchmarks/work/ablation/all.pt \
        --model voxelmorph=benchmarks/work/ablation/voxelmorph.pt [--device auto] [--repeats 5] \
        [-o benchmarks/results/inference-cpu.md]

Pair: atlas subject01 -> subject08 (benchmarks/work/data, 2 mm), after the cached affine stage;
"1 mm" is the same target resampled to 1 mm (linear), so the network sees the same working grid
and only the last steps (field onto the target grid, label warp) grow. The field is resampled onto the target grid on the
device (torch), the label warp runs on the CPU (NumPy). Times are medians of --repeats runs after
one warm-up; file I/O and the affine stage are excluded (the affine stage is
timed once, on CPU, for reference). Peak memory: process peak RSS; on a GPU also torch's peak
allocation.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import median

import click
import numpy as np
import torch

import atlasreg
from atlasreg.engine.grid import pick_device
from atlasreg.registry import get_backend
from atlasreg.spatial import resample_to_spacing
from atlasreg.train import cached_align_pair

from ablation import data
from common import aseg_dice, command_line, header, peak_rss_gib


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int):
    fn()  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return median(times), result


@click.command()
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=PATH")
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--optimize-steps", default=20, show_default=True, help="Also time instance optimisation of this many steps (0: skip).")
@click.option("--threads", default=0, help="torch CPU threads (0: torch's default).")
@click.option("-o", "--output", default=None, help="Markdown table (also written as JSON beside it).")
def main(models: tuple[str, ...], device: str, repeats: int, optimize_steps: int, threads: int, output: str | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device)
    atlas_image, atlas_labels = data(1, "t1"), atlasreg.load(data(1, "seg"), labels=True)
    target_2mm = atlasreg.load(data(8, "t1"))
    truth_2mm = atlasreg.load(data(8, "seg"), labels=True)
    targets = {"2 mm": (target_2mm, truth_2mm), "1 mm": (resample_to_spacing(target_2mm, 1.0), resample_to_spacing(truth_2mm, 1.0))}
    cache = Path(__file__).parent / "work" / "affine-cache"
    rows = []
    for spec in models:
        name, path = spec.split("=", 1)
        backend = get_backend(name)
        network, config = backend.load_network(path, device)
        pair = cached_align_pair(atlas_image, data(8, "t1"), float(config["spacing"]), tuple(config["shape"]), cache)
        moving = torch.from_numpy(pair.moving)[None, None].to(device)
        fixed = torch.from_numpy(pair.fixed)[None, None].to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        net_s, _ = timed(lambda: backend.predict_flow(network, moving, fixed, config), device, repeats)
        optimize_s = None
        if optimize_steps:
            optimize_s, _ = timed(lambda: backend.predict(network, config, pair, target_2mm, device, optimize_steps, 1e-4), device, 1)
        row = {"optimize_steps": optimize_steps, "optimize_s": optimize_s, "backend": name, "network_s": net_s, "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
        for resolution, (target, truth) in targets.items():
            predict_s, transform = timed(lambda: backend.predict(network, config, pair, target, device), device, repeats)
            warp_s, warped = timed(lambda: transform.warp_labels(atlas_labels), "cpu", repeats)
            row[resolution] = {"shape": list(target.shape), "predict_s": predict_s, "warp_s": warp_s, "total_s": predict_s + warp_s,
                               "dice": aseg_dice(warped, truth)}
        if device == "cuda":  # the same model and pair on the CPU
            on_gpu = backend.predict(network, config, pair, target_2mm, device)
            on_cpu = backend.predict(backend.load_network(path, "cpu")[0], config, pair, target_2mm, "cpu")
            warped_gpu, warped_cpu = on_gpu.warp_labels(atlas_labels), on_cpu.warp_labels(atlas_labels)
            row["gpu_vs_cpu"] = {
                "max_abs_field_diff_mm": float(np.abs(on_gpu.field - on_cpu.field).max()),
                "mean_abs_field_mm": float(np.abs(on_cpu.field).mean()),
                "label_agreement": float((warped_gpu.array == warped_cpu.array).mean()),
                "dice_gpu": aseg_dice(warped_gpu, truth_2mm),
                "dice_cpu": aseg_dice(warped_cpu, truth_2mm),
            }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    start = time.perf_counter()
    atlasreg.register(atlasreg.load(atlas_image), target_2mm, backend="affine")
    affine_s = time.perf_counter() - start
    command = command_line()
    result = {"command": command, "device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "affine_s": affine_s, "rows": rows,
              "peak_rss_gib": peak_rss_gib()}
    text = report(result, header(command))
    print(text)
    if output:
        Path(output).write_text(text)
        Path(output).with_suffix(".json").write_text(json.dumps(result, indent=1))


def report(result: dict, head: str) -> str:
    where = result["gpu"] or f"cpu ({result['threads']} torch threads)"
    lines = [head, f"- device: {where}, torch {result['torch']}", "",
             "Atlas 01 -> target 08; medians of repeated runs after a warm-up; no file I/O. `predict` = the network and the field "
             "onto the target grid, on the device (torch); the label warp runs on the CPU (NumPy/SciPy).", "",
             "| backend | target grid | network alone s | predict s | label warp s | total s | mean Dice (aseg) |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for resolution in ("2 mm", "1 mm"):
            r = row[resolution]
            lines.append(f"| {row['backend']} | {resolution} {'×'.join(map(str, r['shape']))} | {row['network_s']:.3f} | {r['predict_s']:.3f} | "
                         f"{r['warp_s']:.3f} | {r['total_s']:.2f} | {r['dice']:.3f} |")
    lines += ["", f"Affine stage (the core's torch stage on the CPU, once): {result['affine_s']:.1f} s. Peak RSS of the process: {result['peak_rss_gib']:.2f} GiB."]
    for row in result["rows"]:
        if row.get("optimize_s") is not None:
            lines.append(f"- {row['backend']}: instance optimisation, {row['optimize_steps']} steps: {row['optimize_s']:.2f} s "
                         f"({row['optimize_s'] / row['optimize_steps']:.3f} s per step).")
    gpu_rows = [row for row in result["rows"] if row.get("gpu_peak_gib") is not None]
    for row in gpu_rows:
        g = row["gpu_vs_cpu"]
        lines.append(f"- {row['backend']}: GPU peak allocation {row['gpu_peak_gib']:.2f} GiB; GPU vs CPU field: max |Δ| {g['max_abs_field_diff_mm']:.2e} mm "
                     f"(mean |field| {g['mean_abs_field_mm']:.2f} mm), labels identical at {100 * g['label_agreement']:.3f} % of voxels, "
                     f"Dice {g['dice_gpu']:.4f} (GPU) vs {g['dice_cpu']:.4f} (CPU).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
