"""The shipped (or given) learned models against affine and ANTs on held-out shared-map subjects,
per target contrast, in one run: without instance optimisation and, with ``--optimize-steps N``,
refined by N steps of it.

    python benchmarks/shipped.py [--targets 8,9,10] [--atlas 1] [--contrasts t1,t2,inverted]
        [--atlas-contrast t1] [--renderer synth|second] [--optimize-steps 20] [--quality]
        [--model contrastive=NAME|PATH ...] [-o benchmarks/results/shipped.md]

The atlas image (``--atlas-contrast``, T1 by default: the user's case) is synthesized by atlasreg;
the targets come from ``benchmarks/shared_maps.target`` in each contrast (``inverted``: the T1
image turned upside down in the head, dark white matter and bright CSF). Images: 2 mm,
skull-stripped, seed = subject number. Learned seconds = network (+ instance optimisation) + warp
of the atlas labels after the affine stage (add the affine row for the whole pipeline).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import mean

import click
import torch

import atlasreg
from atlasreg.engine.grid import align_pair, working_grid
from atlasreg.models import resolve
from atlasreg.registry import get_backend

from common import aseg_dice, command_line, header, publish
from shared_maps import RENDERERS, TARGET_CONTRASTS, subject, target


@click.command()
@click.option("--targets", default="8,9,10", show_default=True)
@click.option("--atlas", default=1, show_default=True)
@click.option("--contrasts", default="t1,t2,inverted", show_default=True, help=f"Target contrasts ({', '.join(TARGET_CONTRASTS)}).")
@click.option("--atlas-contrast", default="t1", show_default=True, help="The atlas image's contrast (synthesized by atlasreg).")
@click.option("--renderer", type=click.Choice(RENDERERS), default="synth", show_default=True, help="What renders the targets.")
@click.option("--optimize-steps", default=0, show_default=True, help="> 0: also each model refined by this many steps of instance optimisation.")
@click.option("--backends", default="contrastive,voxelmorph", show_default=True)
@click.option("--model", "models", multiple=True, metavar="BACKEND=NAME|PATH", help="Instead of the backend's shipped model.")
@click.option("--quality", is_flag=True, help="Also run ANTs quality (minutes per pair on 2 cores).")
@click.option("-o", "--output", default=None)
def main(targets: str, atlas: int, contrasts: str, atlas_contrast: str, renderer: str, optimize_steps: int, backends: str,
         models: tuple[str, ...], quality: bool, output: str | None) -> None:
    torch.set_num_threads(2)
    chosen = dict(spec.split("=", 1) for spec in models)
    networks = {}
    for name in backends.split(","):
        backend = get_backend(name)
        model = resolve(name, chosen.get(name, ""))
        networks[name] = (backend, model, *backend.load_network(model, "cpu"))
    numbers = [int(n) for n in targets.split(",")]
    command = command_line()
    lines = [header(command), f"- torch {torch.__version__}, {torch.get_num_threads()} threads; models: "
             + ", ".join(f"{n} = {Path(v[1]).name}" for n, v in networks.items()), ""]
    for contrast in contrasts.split(","):
        rows: dict[str, list[tuple[float, float]]] = {}
        atlas_img, atlas_lab = subject(atlas, contrast=atlas_contrast)
        for n in numbers:
            target_img, target_lab = target(n, contrast, renderer)
            start = time.perf_counter()
            affine = atlasreg.register(atlas_img, target_img, backend="affine")
            _add(rows, "affine", affine, atlas_lab, target_lab, start, n, contrast)
            presets = ("fast", "quality") if quality else ("fast",)
            for preset in presets:
                start = time.perf_counter()
                ants = atlasreg.register(atlas_img, target_img, backend="ants", options={"preset": preset})
                _add(rows, f"ants {preset}", ants, atlas_lab, target_lab, start, n, contrast)
            for name, (backend, _, network, config) in networks.items():
                pair = align_pair(atlas_img, target_img, working_grid(target_img, config["spacing"], tuple(config["shape"])), matrix=affine.matrix)
                for steps in sorted({0, optimize_steps}):
                    start = time.perf_counter()
                    transform = backend.predict(network, config, pair, target_img, "cpu", optimize_steps=steps)
                    label = f"{name} (shipped) + {steps} steps" if steps else f"{name} (shipped, no instance optimisation)"
                    _add(rows, label, transform, atlas_lab, target_lab, start, n, contrast)
        base = mean(d for d, _ in rows["affine"])
        ants_s = mean(s for _, s in rows["ants fast"])
        lines += [f"### {contrast.upper()} targets ({renderer} renderer; atlas {atlas:02d} {atlas_contrast.upper()} → {', '.join(f'{n:02d}' for n in numbers)}, mean Dice over the 28 aseg structures)", "",
                  "| method | mean Dice | per target | Δ vs affine | s / pair | × ANTs fast time |", "|---|---|---|---|---|---|"]
        for label, values in rows.items():
            d, s = mean(v[0] for v in values), mean(v[1] for v in values)
            each = " / ".join(f"{v[0]:.3f}" for v in values)
            lines.append(f"| {label} | {d:.3f} | {each} | {d - base:+.3f} | {s:.2f} | {s / ants_s:.2f} |")
        lines.append("")
    publish(lines, output)


def _add(rows, label, transform, atlas_labels, target_labels, start, number, contrast) -> None:
    warped = transform.warp_labels(atlas_labels)
    seconds = time.perf_counter() - start
    score = aseg_dice(warped, target_labels)
    rows.setdefault(label, []).append((score, seconds))
    print(f"{contrast} -> {number:02d} {label:<48} Dice {score:.3f} {seconds:6.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
