"""Settings of the engine compared on validation pairs (never the test subjects 08-10): the affine
stage, the ``svf`` backend, and instance optimisation of a shipped model, each at the JSON settings
given, atlas 01 -> the targets given. Prints mean aseg Dice, per-target Dice and mean seconds.

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
from pathlib import Path
from statistics import mean

import click
import torch

import atlasreg

sys.path.insert(0, str(Path(__file__).parent))
from shared_maps import subject  # noqa: E402


def affine(settings: dict, atlas, target, model: str):
    from atlasreg.engine import affine_stage
    from atlasreg.transform import Transform

    return Transform.from_matrix(target[0], affine_stage(atlas[0], target[0], **settings))


def backend(name: str):
    """A backend's registration at the given options (a peer such as ``ants`` on the same pairs)."""
    return lambda settings, atlas, target, model: atlasreg.register(atlas[0], target[0], backend=name, options=settings)


def io(settings: dict, atlas, target, model: str) -> atlasreg.Volume:
    from atlasreg.engine import displacement, optimize_velocity
    from atlasreg.learned import align_pair, transform_from_flow
    from atlasreg.models import resolve
    from atlasreg.registry import get_backend

    backend = get_backend(model)
    network, config = backend.load_network(resolve(model, None), "cpu")
    pair = align_pair(atlas[0], target[0], config["spacing"], tuple(config["shape"]))
    moving, fixed = (torch.from_numpy(a)[None, None] for a in (pair.moving, pair.fixed))
    with torch.no_grad():
        velocity = backend.predict_velocity(network, moving, fixed, config)
    if settings.get("levels"):
        velocity = optimize_velocity(moving, fixed, velocity, **settings)
    return transform_from_flow(displacement(velocity, moving.shape[2:])[0], pair, target[0]).warp_labels(atlas[1])


@click.command()
@click.argument("stage")
@click.argument("settings")
@click.option("--targets", default="7", show_default=True, help="validation subjects (not 8, 9, 10)")
@click.option("--model", default="contrastive", show_default=True, help="io: the backend whose shipped model starts")
@click.option("--threads", default=2, show_default=True)
def main(stage: str, settings: str, targets: str, model: str, threads: int) -> None:
    torch.set_num_threads(threads)
    numbers = [int(t) for t in targets.split(",")]
    if set(numbers) & {8, 9, 10}:
        sys.exit("subjects 08-10 are the test set: tune on others")
    atlas = subject(1)
    data = {n: subject(n) for n in numbers}
    if stage == "affine":  # warm-up: torch's first call pays for lazy initialisation
        affine({"rigid_iterations": (1, 1), "affine_iterations": (1, 1)}, atlas, data[numbers[0]], model)
    run = {"affine": affine, "io": io}.get(stage) or backend(stage)
    for setting in json.loads(settings):
        dice, seconds = [], []
        for n in numbers:
            start = time.perf_counter()
            result = run(setting, atlas, data[n], model)
            registered = time.perf_counter() - start
            warped = result if stage == "io" else result.warp_labels(atlas[1])
            seconds.append(time.perf_counter() - start if stage == "io" else registered)  # io: label warp included
            dice.append(atlasreg.evaluate(warped, data[n][1], "aseg")["mean_dice"])
        print(f"{stage} {json.dumps(setting)}: Dice {mean(dice):.4f} ({' '.join(f'{d:.3f}' for d in dice)}), {mean(seconds):.2f} s / pair", flush=True)


if __name__ == "__main__":
    main()
