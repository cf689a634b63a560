"""The ``affine`` backend: the core's torch affine stage (rigid, then 12-parameter affine), the
baseline every deformable method must beat and the stage the learned and ``svf`` backends start from."""

from __future__ import annotations

from typing import Any, Mapping

from atlasreg.engine import defaults
from atlasreg.errors import AtlasregError
from atlasreg.hookspecs import hookimpl
from atlasreg.plugin_api import MAX_ITERATIONS, Backend, Option
from atlasreg.transform import Transform
from atlasreg.volume import Volume


class AffineBackend(Backend):
    name = "affine"
    description = "centre of mass, rigid, then 12-parameter affine by Adam on a 8/4 mm pyramid (torch, mutual information)"
    requires = ("torch",)
    devices = ("cpu", "cuda")
    deterministic = True  # voxels sampled by a fixed-seed generator: same bytes on CPU (tests/test_engine.py)
    options = {
        "metric": Option("mi", "mi (mutual information: any contrasts) or mse (z-scored, same contrast)", defaults.AFFINE_METRICS),
        "levels": Option(defaults.AFFINE_LEVELS, "voxel size in mm of each pyramid level, coarse to fine", minimum=0.1, maximum=64),
        "rigid_iterations": Option(defaults.AFFINE_RIGID_ITERATIONS, "Adam steps per level of the rigid stage", minimum=0, maximum=MAX_ITERATIONS),
        "affine_iterations": Option(defaults.AFFINE_ITERATIONS, "Adam steps per level of the 12-parameter stage", minimum=0, maximum=MAX_ITERATIONS),
        "samples": Option(defaults.AFFINE_SAMPLES, "voxels the similarity reads per step (drawn afresh, fixed seed)", minimum=100, maximum=10**8),
        "device": Option("auto", "where the stage runs (float64 on the CPU, float32 on a GPU)", ("auto", "cpu", "cuda")),
    }

    def check_options(self, resolved: Mapping[str, Any]) -> None:
        """One iteration count per level in each stage."""
        for stage in ("rigid_iterations", "affine_iterations"):
            if len(resolved[stage]) != len(resolved["levels"]):
                raise AtlasregError(f"affine: {stage} needs one count per level ({len(resolved['levels'])} levels)")

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        from atlasreg.engine import affine_stage
        from atlasreg.engine.grid import pick_device

        matrix = affine_stage(
            moving, fixed, levels=tuple(float(mm) for mm in options["levels"]), rigid_iterations=options["rigid_iterations"],
            affine_iterations=options["affine_iterations"], metric=options["metric"], samples=options["samples"],
            device=pick_device(options["device"]),
        )
        return Transform.from_matrix(fixed, matrix)


@hookimpl
def atlasreg_backends():
    return [AffineBackend()]
