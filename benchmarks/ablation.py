"""Table 3 of the paper on the shared-map proxy: the contrastive model trained with each loss
combination (and with the KL term of eq. 6 as printed instead of the Laplacian-prior one), plus
the VoxelMorph-style baseline, all for the same number of steps on the same pairs, then scored on
held-out subjects.

    python benchmarks/ablation.py [--steps 300] [--batch-size 8] [--device auto] \
        [--work benchmarks/work/ablation] [-o benchmarks/results/ablation.md]

Training: atlas subject01 -> subjects 02-07, `atlasreg.train` with Adam at a constant learning rate
(--lr; lr_floor 1: no decay), seed 0. Evaluation: atlas 01 -> held-out 08, 09, 10, the atlas labels carried by
each model (after the same cached affine stage), mean Dice over the 28 aseg structures. Models and
their JSON-lines logs are kept in --work; the two full models (`all.pt`, `voxelmorph.pt`) are what
benchmarks/learned.py and the proxy comparison use. Images: benchmarks/work/data, written by
`python benchmarks/shared_maps.py benchmarks/work/data 1 2 3 4 5 6 7 8 9 10` when missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

import click
import torch

import atlasreg
from atlasreg.engine.grid import pick_device
from atlasreg.registry import get_backend
from atlasreg.train import TrainSettings, cached_align_pair, train
from atlasreg.transform import Transform

from common import HERE, WORK, aseg_dice, command_line, header

DATA = WORK / "data"
CACHE = WORK / "affine-cache"  # shared with benchmarks/inference.py

#: name -> (backend, config overrides); the four contrastive rows are the paper's Table 3
VARIANTS: dict[str, tuple[str, dict]] = {
    "all": ("contrastive", {"losses": ["recon", "smooth", "contrast"]}),
    "recon": ("contrastive", {"losses": ["recon"]}),
    "recon+smooth": ("contrastive", {"losses": ["recon", "smooth"]}),
    "recon+contrast": ("contrastive", {"losses": ["recon", "contrast"]}),
    "all-kl-eq6": ("contrastive", {"losses": ["recon", "smooth", "contrast"], "smooth": "paper"}),
    "voxelmorph": ("voxelmorph", {}),
    "all-sigma0.05": ("contrastive", {"image_sigma": 0.05}),  # sensitivity of the default model to sigma of eq. 4/7
    "all-sigma0.15": ("contrastive", {"image_sigma": 0.15}),
}
LABELS = {
    "recon": "contrastive, L_recon",
    "recon+smooth": "contrastive, L_recon + L_smooth",
    "recon+contrast": "contrastive, L_recon + L_contrast",
    "all": "contrastive, L_recon + L_smooth + L_contrast (default)",
    "all-kl-eq6": "contrastive, all three, L_smooth = eq. 6 as printed",
    "voxelmorph": "voxelmorph baseline (NCC + gradient)",
    "all-sigma0.05": "contrastive, all three, image sigma 0.05 (default 0.1)",
    "all-sigma0.15": "contrastive, all three, image sigma 0.15 (default 0.1)",
}


def data(n: int, kind: str) -> Path:
    path = DATA / f"subject{n:02d}_{kind}.nii.gz"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "shared_maps.py"), str(DATA), *map(str, range(1, 11))], check=True)
    return path


@click.command()
@click.option("--steps", default=300, show_default=True, help="Optimiser steps per model.")
@click.option("--budget-seconds", default=0.0, help="Instead of --steps: train the first variant this long, then every other for as many steps as it made.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--variants", default="all,recon,recon+smooth,recon+contrast,all-kl-eq6,voxelmorph", show_default=True)
@click.option("--targets", default="8,9,10", show_default=True)
@click.option("--work", default=str(WORK / "ablation"), show_default=True)
@click.option("--evaluate-only", is_flag=True, help="Score the models already in --work.")
@click.option("-o", "--output", default=None, help="Markdown table (also written as JSON beside it).")
def main(steps: int, budget_seconds: float, batch_size: int, lr: float, device: str, variants: str, targets: str, work: str,
         evaluate_only: bool, output: str | None) -> None:
    device = pick_device(device)
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    names = [v.strip() for v in variants.split(",")]
    atlas = (data(1, "t1"), data(1, "seg"))
    images = [data(n, "t1") for n in range(2, 8)]
    trained: dict[str, dict] = {}
    for name in names:
        model = work_dir / f"{name}.pt"
        if not evaluate_only:
            model.unlink(missing_ok=True)
            (work_dir / f"{name}.pt.log.jsonl").unlink(missing_ok=True)
            by_time = budget_seconds > 0 and not trained
            start = time.perf_counter()
            train(VARIANTS[name][0], train_settings(name, work_dir, atlas, images, steps, budget_seconds if by_time else 0.0,
                                                    batch_size, lr, device))
            print(f"{name}: trained in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        trained[name] = _training_record(work_dir / f"{name}.pt.log.jsonl")
        steps = trained[name]["steps"] if budget_seconds > 0 and len(trained) == 1 else steps
    scores = evaluate(names, work_dir, atlas, [int(n) for n in targets.split(",")], CACHE, device)
    command = command_line()
    result = {"command": command, "device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "torch": torch.__version__, "steps": steps, "batch_size": batch_size, "lr": lr, "training": trained, "dice": scores}
    text = report(result, header(command))
    print(text)
    if output:
        Path(output).write_text(text)
        Path(output).with_suffix(".json").write_text(json.dumps(result, indent=1))


def train_settings(name: str, work_dir: Path, atlas: tuple[Path, Path], images: list[Path], steps: int, budget_seconds: float,
                   batch_size: int, lr: float, device: str) -> TrainSettings:
    """How variant ``name`` is trained: ``steps`` steps, or as many as ``budget_seconds`` allow (> 0),
    at the constant learning rate ``lr`` (lr_floor 1); its config checked by its backend."""
    backend, config = VARIANTS[name]
    get_backend(backend).config(config)
    return TrainSettings(images=images, atlas=atlas, output=work_dir / f"{name}.pt", steps=10**9 if budget_seconds > 0 else steps,
                         max_minutes=budget_seconds / 60, batch_size=batch_size, lr=lr, lr_floor=1.0, seed=0, device=device,
                         cache_dir=CACHE, progress=False, config=config)


def settings(steps: int, budget_seconds: float, batch_size: int, lr: float, device: str, variants: str, work: str, **_: object) -> list:
    """The TrainSettings of every variant asked for, without training (the atlas and images need not exist yet)."""
    atlas, images = (DATA / "subject01_t1.nii.gz", DATA / "subject01_seg.nii.gz"), [DATA / f"subject{n:02d}_t1.nii.gz" for n in range(2, 8)]
    return [train_settings(name.strip(), Path(work), atlas, images, steps, budget_seconds, batch_size, lr, device)
            for name in variants.split(",")]


def _training_record(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    pairs = sum(r["pairs"] for r in steps)
    seconds = steps[-1]["seconds"]
    return {"steps": len(steps), "pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
            "last_loss": mean(r["loss"] for r in steps[-10:])}


def evaluate(names: list[str], work_dir: Path, atlas: tuple[Path, Path], targets: list[int], cache: Path, device: str) -> dict:
    """Mean aseg Dice per held-out target for affine alone and for each model."""
    atlas_labels = atlasreg.load(atlas[1], labels=True)
    networks = {}
    for name in names:
        backend = get_backend(VARIANTS[name][0])
        networks[name] = (backend, *backend.load_network(work_dir / f"{name}.pt", device))
    scores: dict[str, dict[str, float]] = {"affine": {}}
    for n in targets:
        target, truth = atlasreg.load(data(n, "t1")), atlasreg.load(data(n, "seg"), labels=True)
        for name, (backend, network, config) in networks.items():
            pair = cached_align_pair(atlas[0], data(n, "t1"), float(config["spacing"]), tuple(config["shape"]), cache)
            if n not in map(int, scores["affine"]):
                affine_only = Transform.from_matrix(target, pair.matrix)
                scores["affine"][str(n)] = aseg_dice(affine_only.warp_labels(atlas_labels), truth)
            transform = backend.predict(network, config, pair, target, device)
            dice = aseg_dice(transform.warp_labels(atlas_labels), truth)
            scores.setdefault(name, {})[str(n)] = dice
            print(f"01->{n:02d} {name:<16} Dice {dice:.3f}", file=sys.stderr)
    return scores


def report(result: dict, head: str) -> str:
    device = result["gpu"] or "cpu"
    lines = [head, f"- device: {device}, torch {result['torch']}", "",
             f"Each model: {result['steps']} steps of batch {result['batch_size']}, Adam lr {result['lr']} constant, seed 0, "
             "atlas 01 -> subjects 02-07. Dice: mean over the 28 aseg structures, atlas 01 -> held-out "
             f"{', '.join(next(iter(result['dice'].values())))}.", "",
             "| model | mean Dice | Δ vs affine | per target | training pairs/s | final loss (mean of last 10 steps) |",
             "|---|---|---|---|---|---|"]
    base = mean(result["dice"]["affine"].values())
    for name, per_target in result["dice"].items():
        d = mean(per_target.values())
        training = result["training"].get(name)
        speed = f"{training['pairs_per_s']:.1f}" if training else "–"
        loss = f"{training['last_loss']:.4g}" if training else "–"
        label = LABELS.get(name, "affine stage only")
        lines.append(f"| {label} | {d:.3f} | {d - base:+.3f} | {' / '.join(f'{v:.3f}' for v in per_target.values())} | {speed} | {loss} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
