"""Settings of the engine compared on validation pairs (never the test subjects 08-10): the affine
stage, the ``svf`` backend, and instance optimisation of a shipped model, each at the JSON settings
given, atlas 01 -> the targets given. Prints mean aseg Dice, per-target Dice, mean seconds and
mean CPU seconds (all threads, and the children ANTs runs in). ``--renderer``/``--contrast``: images
of atlasreg's synthesizer or of benchmarks/second_renderer.py; targets T1, T2-like, PD-like, FLAIR-like or
inverted; ``--atlas-contrast``: the atlas's (T1 unless given).

    python benchmarks/tune_engine.py affine '[{}, {"metric": "mse"}]' --targets 2,3,4,5,6,7
    python benchmarks/tune_engine.py svf '[{}, {"iterations": [100, 50, 20]}]' --targets 3,5,7
    python benchmarks/tune_engine.py ants '[{"transform": "Affine"}]' --targets 2,3,4,5,6,7
    python benchmarks/tune_engine.py io '[{"levels": [2, 1], "iterations": [15, 5]}]' --targets 7 [--model contrastive]

affine: ``atlasreg.engine.affine_stage`` keyword arguments (seconds: the stage alone, after one
warm-up call). Any backend name (svf, ants, ...): its options (seconds: ``atlasreg.register``). io: ``optimize_velocity``
keyword arguments applied to the shipped model's velocity (``{"levels": null}``: the network
alone); seconds: the whole pipeline (affine stage, resampling, network, optimisation, label warp).
"""

from __future__ import annotations

import json
import sys
import time
from statistics import mean

import click
import torch

import atlasreg

from common import aseg_dice, cpu_seconds
from shared_maps import RENDERERS, TARGET_CONTRASTS, target


def affine(settings: dict, atlas, target, model: str):
    from atlasreg.engine import affine_stage
    from atlasreg.transform import Transform

    return Transform.from_matrix(target[0], affine_stage(atlas[0], target[0], **settings))


def backend(name: str):
    """A backend's registration at the given options (a peer such as ``ants`` on the same pairs)."""
    return lambda settings, atlas, target, model: atlasreg.register(atlas[0], target[0], backend=name, options=settings)


def io(settings: dict, atlas, target, model: str) -> atlasreg.Volume:
    from atlasreg.engine import displacement, optimize_velocity
    from atlasreg.engine.grid import align_pair, similarity_target, transform_from_flow, working_grid
    from atlasreg.models import resolve
    from atlasreg.registry import get_backend

    backend = get_backend(model)
    network, config = backend.load_network(resolve(model, ""), "cpu")
    pair = align_pair(atlas[0], target[0], working_grid(target[0], config["spacing"], tuple(config["shape"])))
    if not settings.get("levels"):  # the network alone: what `register` runs without instance optimisation
        return backend.predict(network, config, pair, target[0], "cpu").warp_labels(atlas[1])
    moving, fixed = (torch.from_numpy(a)[None, None] for a in (pair.moving, pair.fixed))
    with torch.no_grad():
        velocity = backend.predict_velocity(network, moving, fixed, config)
    matched = torch.from_numpy(similarity_target(pair.moving, pair.fixed, settings.get("similarity", "lncc")))[None, None]
    velocity = optimize_velocity(moving, matched, velocity, **settings)
    return transform_from_flow(displacement(velocity, moving.shape[2:])[0], pair, target[0]).warp_labels(atlas[1])


@click.command()
@click.argument("stage")
@click.argument("settings")
@click.option("--targets", default="7", show_default=True, help="validation subjects (not 8, 9, 10)")
@click.option("--model", default="contrastive", show_default=True, help="io: the backend whose shipped model starts")
@click.option("--contrast", type=click.Choice(TARGET_CONTRASTS), default="t1", show_default=True,
              help="how the targets are rendered: inverted = T1 intensities turned upside down inside the head")
@click.option("--atlas-contrast", type=click.Choice(TARGET_CONTRASTS), default="t1", show_default=True,
              help="how the atlas is rendered (t2 with --contrast t2: the same-contrast reference for T2-like targets)")
@click.option("--renderer", type=click.Choice(RENDERERS), default="synth", show_default=True,
              help="what renders atlas and targets: atlasreg's synthesizer or benchmarks/second_renderer.py")
@click.option("--threads", default=2, show_default=True)
def main(stage: str, settings: str, targets: str, model: str, contrast: str, atlas_contrast: str, renderer: str, threads: int) -> None:
    torch.set_num_threads(threads)
    numbers = [int(t) for t in targets.split(",")]
    if set(numbers) & {8, 9, 10}:
        sys.exit("subjects 08-10 are the test set: tune on others")
    atlas = target(1, atlas_contrast, renderer)
    data = {n: target(n, contrast, renderer) for n in numbers}
    if stage == "affine":  # warm-up: torch's first call pays for lazy initialisation
        affine({"rigid_iterations": (1, 1), "affine_iterations": (1, 1)}, atlas, data[numbers[0]], model)
    run = {"affine": affine, "io": io}.get(stage) or backend(stage)
    for setting in json.loads(settings):
        dice, seconds, cpu = [], [], []
        for n in numbers:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            result = run(setting, atlas, data[n], model)
            registered, registered_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
            warped = result if stage == "io" else result.warp_labels(atlas[1])
            seconds.append(time.perf_counter() - start if stage == "io" else registered)  # io: label warp included
            cpu.append(cpu_seconds() - start_cpu if stage == "io" else registered_cpu)
            dice.append(aseg_dice(warped, data[n][1]))
        print(f"{stage} {json.dumps(setting)} ({renderer}, {atlas_contrast} atlas, {contrast} targets): Dice {mean(dice):.4f} "
              f"({' '.join(f'{d:.3f}' for d in dice)}), {mean(seconds):.2f} s / pair, {mean(cpu):.2f} CPU s / pair", flush=True)


if __name__ == "__main__":
    main()
