"""Classical backends and label fusion on atlas->target pairs built from the shared label maps.

    python benchmarks/classical.py [--pairs 1:2,3:4,5:6,7:8] [--quality/--no-quality] [-o benchmarks/results/classical.md]

Part 1: each backend registers the atlas image to the target image; the atlas labels are warped
and scored against the target's labels (aseg protocol, 28 structures). Seconds are wall-clock for
registration alone (no file I/O), in one process, one pair after another.
Part 2: three atlases -> one target, each fused with every available fusion method.
"""

from __future__ import annotations

import sys
import time
from statistics import mean

import click
import numpy as np

import atlasreg
from atlasreg.metrics import folding_percent
from atlasreg.registry import get_backend, get_fusion

from common import CLASSICAL, aseg_dice, check_methods, command_line, header, publish
from shared_maps import subject


def parse_pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in pair.split(":")) for pair in text.split(",")]  # type: ignore[misc]


@click.command()
@click.option("--pairs", default="1:2,3:4,5:6,7:8", show_default=True, help="atlas:target subject numbers")
@click.option("--quality/--no-quality", default=True, help="Include the slow ANTs quality preset.")
@click.option("--fusion-atlases", default="1,3,5", show_default=True)
@click.option("--fusion-target", default=10, show_default=True)
@click.option("--fusion-backend", default="simpleitk", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the markdown here.")
def main(pairs: str, quality: bool, fusion_atlases: str, fusion_target: int, fusion_backend: str, output: str | None) -> None:
    plan = settings(pairs, quality, fusion_atlases, fusion_target, fusion_backend, output)
    backends = plan["backends"]
    rows: dict[str, list[tuple[float, float, float]]] = {label: [] for label in backends}
    lines = [header(command_line()), "", "| atlas → target | " + " | ".join(f"{label} Dice / s" for label in backends) + " |",
             "|---|" + "---|" * len(backends)]
    for atlas_n, target_n in plan["pairs"]:
        atlas_img, atlas_lab = subject(atlas_n)
        target_img, target_lab = subject(target_n)
        cells = []
        for label, (name, options) in backends.items():
            start = time.perf_counter()
            transform = atlasreg.register(atlas_img, target_img, backend=name, options=options)
            seconds = time.perf_counter() - start
            score = aseg_dice(transform.warp_labels(atlas_lab), target_lab)
            folding = folding_percent(transform.jacobian_determinant(), target_lab.array > 0)
            rows[label].append((score, seconds, folding))
            cells.append(f"{score:.3f} / {seconds:.1f}")
            print(f"{atlas_n:02d}->{target_n:02d} {label:<13} Dice {score:.3f}  {seconds:6.1f} s  folding {folding:.3f}%", file=sys.stderr)
        lines.append(f"| {atlas_n:02d} → {target_n:02d} | " + " | ".join(cells) + " |")

    reference = mean(s for _, s, _ in rows["ants fast"])
    lines += ["", "| backend | mean Dice (aseg, 28 structures) | mean s / pair | × ANTs fast time | % folding (det J ≤ 0, brain) |",
              "|---|---|---|---|---|"]
    for label, values in rows.items():
        d, s, f = (mean(v[i] for v in values) for i in range(3))
        sd = np.std([v[0] for v in values])
        lines.append(f"| {label} | {d:.3f} ± {sd:.3f} | {s:.1f} | {s / reference:.2f} | {f:.3f} |")

    lines += ["", fusion_section(plan["fusion_atlases"], fusion_target, fusion_backend)]
    publish(lines, output)


def settings(pairs: str, quality: bool, fusion_atlases: str, fusion_target: int, fusion_backend: str, output: str | None) -> dict:
    """What a run would do, its methods checked against what the plugins declare."""
    backends = {label: method for label, method in CLASSICAL.items() if quality or label != "ants quality"}
    check_methods({**backends, "fusion backend": (fusion_backend, {})})
    return {"pairs": parse_pairs(pairs), "backends": backends, "fusion_atlases": [int(v) for v in fusion_atlases.split(",")]}


def fusion_section(numbers: list[int], target_n: int, backend: str) -> str:
    """Single-atlas Dice of each atlas, then each fusion method's Dice, all on one target."""
    atlases = [subject(n) for n in numbers]
    target_img, target_lab = subject(target_n)
    # register once; every fusion method sees the same warped atlases
    method = get_backend(backend)
    options = method.resolve_options({})
    warped_images, warped_labels, singles = [], [], []
    for image, labels in atlases:
        transform = method.register(image, target_img, **options)
        warped_labels.append(transform.warp_labels(labels))
        warped_images.append(transform.warp(image))
        singles.append(aseg_dice(warped_labels[-1], target_lab))
    lines = [f"Fusion: atlases {', '.join(f'{n:02d}' for n in numbers)} → target {target_n:02d}, backend {backend} (registered once, fused by each method)", "",
             "| method | mean Dice (aseg) | fusion s |", "|---|---|---|"]
    for n, score in zip(numbers, singles):
        lines.append(f"| single atlas {n:02d} | {score:.3f} | – |")
    lines.append(f"| mean of single atlases | {mean(singles):.3f} | – |")
    for info in atlasreg.fusions():
        if not info.available:
            continue
        fuser = get_fusion(info.name)
        start = time.perf_counter()
        fused = fuser.fuse(target_img, warped_images, warped_labels, **fuser.resolve_options({}))
        seconds = time.perf_counter() - start
        score = aseg_dice(fused, target_lab)
        print(f"fusion {info.name:<10} Dice {score:.3f}  {seconds:.1f} s", file=sys.stderr)
        lines.append(f"| {info.name} | {score:.3f} | {seconds:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
