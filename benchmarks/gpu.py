"""The GPU path measured (issue 22): per-target seconds of `atlasreg segment` on a folder of 10
targets, and where one target's time goes, stage by stage. benchmarks/gpu.sh runs it all on a lent
GPU machine; the two commands also run on a CPU.

    python benchmarks/gpu.py summary OUT/svf OUT/contrastive ... [-o OUT/segment.md]
    python benchmarks/gpu.py stages [--device cuda] [--repeats 3] [-o OUT/stages.md]

summary: each study folder's records (``*_seg.json``, written by ``atlasreg segment``): seconds per
target (the record's: the target read, registration and label warp; not the files written nor the
QC figure), the first target (which pays for CUDA's start-up) apart, and mean Dice against
benchmarks/work/data's label maps. stages: atlas 01 -> target 08 of benchmarks/work/data, each
stage of ``svf`` and of a learned backend with 20 instance-optimisation steps timed alone
(medians of --repeats after a warm-up, the device synchronised), on the device given.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import mean, median

import click

from common import WORK, aseg_dice, header, publish

DATA = WORK / "data"


def _seconds(fn, device: str, repeats: int):
    """(median seconds of ``fn()`` over ``repeats`` runs after a warm-up, its last result)."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return median(times), result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Per-target time of `atlasreg segment` on a GPU, and its stages."""


@main.command()
@click.argument("studies", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the markdown table here.")
def summary(studies: tuple[str, ...], output: str | None) -> None:
    """Per-target seconds and Dice of each study folder written by `atlasreg segment`."""
    import atlasreg

    lines = ["| study | method | targets | s / target (mean) | median | first target | mean of the others | mean Dice (aseg) |",
             "|---|---|---|---|---|---|---|---|"]
    for study in studies:
        records = sorted((json.loads(p.read_text()) for p in Path(study).glob("*_seg.json")), key=lambda r: r["target"])
        ok = [r for r in records if r.get("status") == "ok"]
        if not ok:
            lines.append(f"| {Path(study).name} | – | 0 of {len(records)} finished | | | | | |")
            continue
        seconds = [r["seconds"] for r in ok]
        dice = []
        for record in ok:
            truth = DATA / Path(record["target"]).name.replace("_t1", "_seg")
            if truth.exists():
                dice.append(aseg_dice(atlasreg.load(record["labels"], labels=True), atlasreg.load(truth, labels=True)))
        others = f"{mean(seconds[1:]):.3f}" if len(seconds) > 1 else "–"
        scored = f"{mean(dice):.3f}" if dice else "–"
        lines.append(f"| {Path(study).name} | {ok[0]['backend']} | {len(ok)} | {mean(seconds):.3f} | {median(seconds):.3f} | "
                     f"{seconds[0]:.3f} | {others} | {scored} |")
    publish(lines, output)


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")
@click.option("--repeats", default=3, show_default=True)
@click.option("--learned", default="contrastive", show_default=True, help="the learned backend timed with 20 instance-optimisation steps")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the markdown table here.")
def stages(device: str, repeats: int, learned: str, output: str | None) -> None:
    """Each stage of one target's segmentation timed alone, for svf and a learned backend + 20 steps."""
    import torch

    import atlasreg
    from atlasreg.engine import affine_stage, displacement, optimize_velocity
    from atlasreg.engine.grid import align_pair, covering_grid, pick_device, transform_from_flow, working_grid
    from atlasreg.models import resolve
    from atlasreg.registry import get_backend


    device = pick_device(device)
    atlas, atlas_labels = atlasreg.load(DATA / "subject01_t1.nii.gz"), atlasreg.load(DATA / "subject01_seg.nii.gz", labels=True)
    target_path = DATA / "subject08_t1.nii.gz"
    rows = [("read the target (NIfTI, gzip)", _seconds(lambda: atlasreg.load(target_path), "cpu", repeats)[0])]
    target = atlasreg.load(target_path)
    rows.append(("affine stage", _seconds(lambda: affine_stage(atlas, target, device=device), device, repeats)[0]))
    matrix = affine_stage(atlas, target, device=device)
    grid = covering_grid(target, 2.0)
    shape = grid.shape
    seconds, pair = _seconds(lambda: align_pair(atlas, target, grid, matrix=matrix, device=device), device, repeats)
    rows.append((f"svf: images onto the working grid {'×'.join(map(str, shape))}", seconds))
    moving, fixed = (torch.from_numpy(a)[None, None].to(device) for a in (pair.moving, pair.fixed))
    seconds, velocity = _seconds(lambda: optimize_velocity(moving, fixed), device, repeats)
    rows.append(("svf: velocity optimisation (default levels and steps)", seconds))
    seconds, transform = _seconds(lambda: transform_from_flow(displacement(velocity, shape)[0], pair, target), device, repeats)
    rows.append(("svf: exp(v), field onto the target grid", seconds))
    rows.append((f"svf: label warp ({transform.device or 'NumPy'})", _seconds(lambda: transform.warp_labels(atlas_labels), device, repeats)[0]))
    rows.append(("svf: atlasreg.register whole", _seconds(lambda: atlasreg.register(atlas, target, backend="svf"), device, repeats)[0]))
    backend = get_backend(learned)
    network, config = backend.load_network(resolve(learned, ""), device)
    learned_pair = align_pair(atlas, target, working_grid(target, config["spacing"], tuple(config["shape"])), matrix=matrix, device=device)
    rows.append((f"{learned}: network + 20 steps + field",
                 _seconds(lambda: backend.predict(network, config, learned_pair, target, device, 20, 0.2), device, repeats)[0]))
    options = {"optimize_steps": 20, "device": device}
    rows.append((f"{learned} + 20 steps: atlasreg.register whole",
                 _seconds(lambda: atlasreg.register(atlas, target, backend=learned, options=options), device, repeats)[0]))
    lines = [header("python benchmarks/gpu.py stages " + " ".join(sys.argv[2:])),
             f"- device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}", "",
             "| stage (atlas 01 -> target 08, 2 mm) | s (median) |", "|---|---|"]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in rows]
    publish(lines, output)


if __name__ == "__main__":
    main()
