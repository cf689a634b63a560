"""Training throughput of the learned backends on synthesized pairs: pairs per second of whole
training steps (synthesis, forward, backward, Adam) and the share of a step spent waiting for the
batch, for each backend and batch size, on the CPU or a GPU.

    python benchmarks/train_speed.py [--backends contrastive,voxelmorph] [--batches 2,8] [--device cpu]
        [--threads 2] [--steps 3] [--maps '../shared/data/labelmaps/subject0[12].nii.gz']
        [-C backend:KEY=JSON ...] [--no-prefetch] [-o benchmarks/results/train-speed.md]

Each row: one ``atlasreg.train.train`` run of 1 + ``--steps`` steps in this process (the first
step, with its one-off costs, is left out), pairs/s = batch x steps / their wall-clock seconds.
``synthesis s/pair``: the synthesis alone, the same seeds, timed apart from training. ``waiting``:
the share of the measured steps' time spent waiting for the batch (the training log's
``data_seconds``; with prefetch on the CPU the next batch is synthesized while a step runs).
Runs against older trees too (no ``data_seconds`` there: synthesis runs inside the step, its
whole time is waiting), so the same command measures a before and an after.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import click
import torch

from atlasreg.registry import get_backend
from atlasreg.synth_pairs import SynthPairs, pair_seed
from atlasreg.train import SynthSource, TrainSettings, train

from common import HERE, command_line, header, publish

DEFAULT_MAPS = str(HERE.parents[1] / "shared" / "data" / "labelmaps" / "subject0[12].nii.gz")


def _synthesis_seconds(maps, config, device: str, seeds: list[int], view: bool) -> float:
    """Seconds to synthesize the pairs of ``seeds`` (one batch) after one warm-up batch."""
    kwargs = {"device": device} if "device" in SynthPairs.__init__.__code__.co_varnames else {}
    pairs = SynthPairs(maps, config["crop"], **kwargs)

    def once(batch_seeds):
        if hasattr(pairs, "batch"):
            out = pairs.batch(batch_seeds, view=view)
        else:  # an older tree: one pair at a time
            out = [pairs.pair(s) for s in batch_seeds]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    once([s + 1 for s in seeds])
    start = time.perf_counter()
    once(seeds)
    return time.perf_counter() - start


def _run(backend: str, batch: int, steps: int, device: str, maps: list[Path], config: dict, prefetch: bool, work: Path) -> dict:
    output = work / f"{backend}-{batch}.pt"
    options = dict(output=output, synth=maps, steps=steps + 1, batch_size=batch, seed=0, device=device, progress=False,
                   save_every=10**6, cache_dir=work.parent / "cache", config=config)
    if "prefetch" in {f.name for f in fields(TrainSettings)}:
        options["prefetch"] = prefetch
    train(backend, TrainSettings(**options))
    records = [json.loads(line) for line in output.with_name(output.name + ".log.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    seconds = records[-1]["seconds"] - records[0]["seconds"]
    waited = sum(r["data_seconds"] for r in records[1:]) if "data_seconds" in records[0] else None
    full = get_backend(backend).config(config)
    view = getattr(get_backend(backend), "needs_view", lambda c: False)(full)
    grid = SynthSource._on_grid
    arrays = [grid(m, maps[0], float(full["spacing"]), tuple(full["shape"]), work.parent / "cache") for m in maps]
    synth = _synthesis_seconds(arrays, full, device, [pair_seed(0, 10**6, k) for k in range(batch)], view)
    if waited is None:
        waited = synth * steps  # synthesis ran inside every step, one batch each
    return {"backend": backend, "batch": batch, "pairs_per_s": batch * steps / seconds, "step_s": seconds / steps,
            "synth_s_per_pair": synth / batch, "waiting": waited / seconds}


@click.command()
@click.option("--backends", default="contrastive,voxelmorph", show_default=True)
@click.option("--batches", default="2,8", show_default=True)
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch intra-op threads (CPU)")
@click.option("--steps", default=3, show_default=True, help="measured steps (after one warm-up step)")
@click.option("--maps", default=DEFAULT_MAPS, show_default=True, help="label maps (a glob)")
@click.option("-C", "configs", multiple=True, metavar="BACKEND:KEY=JSON", help="config override, e.g. contrastive:contrast=\"cross\"")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True)
@click.option("--work", default=None, help="folder for the model files, logs and the label-map cache [default: a temporary one]")
@click.option("-o", "--output", default=None)
def main(backends, batches, device, threads, steps, maps, configs, prefetch, work, output) -> None:
    torch.set_num_threads(threads)
    paths = [Path(p) for p in sorted(glob.glob(maps))]
    if not paths:
        sys.exit(f"no label maps match {maps}")
    overrides: dict[str, dict] = {}
    for spec in configs:
        name, assignment = spec.split(":", 1)
        key, value = assignment.split("=", 1)
        overrides.setdefault(name, {})[key] = json.loads(value)
    root = Path(work) if work else Path(tempfile.mkdtemp(prefix="train-speed-"))
    (root / "runs").mkdir(parents=True, exist_ok=True)
    rows = []
    for backend in backends.split(","):
        for batch in (int(b) for b in batches.split(",")):
            row = _run(backend, batch, steps, device, paths, overrides.get(backend, {}), prefetch, root / "runs")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    command = command_line()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [header(command), f"- torch {torch.__version__}, device {device}, {threads} threads, prefetch {prefetch}, "
             f"load average before the last row (1/5/15 min) {load}; maps: {', '.join(p.name for p in paths)}", "",
             "| backend | batch | pairs/s | s/step | synthesis s/pair | waiting for the batch |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['pairs_per_s']:.2f} | {r['step_s']:.2f} | {r['synth_s_per_pair']:.3f} | "
                     f"{100 * r['waiting']:.0f} % |")
    publish(lines, output)


if __name__ == "__main__":
    main()
