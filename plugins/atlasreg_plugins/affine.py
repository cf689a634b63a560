"""The ``affine`` backend: the core's torch affine stage (rigid, then 12-parameter affine), the
baseline every deformable method must beat and the stage the learned and ``svf`` backends start from."""

from __future__ import annotations

from typing import Any, Mapping

from atlasreg.hookspecs import hookimpl
from atlasreg.plugin_api import MAX_ITERATIONS, Backend, Option
from atlasreg.transform import Transform
from atlasreg.volume import Volume

METRICS = ("mse", "mi", "lncc")


class AffineBackend(Backend):
    name = "affine"
    description = "centre of mass, rigid, then 12-parameter affine by Adam on a 8/4/2 mm pyramid (torch)"
    requires = ("torch",)
    deterministic = True  # no random sampling; same bytes on CPU (tests/test_engine.py)
    options = {
        "metric": Option("mse", "mse (z-scored, same contrast), mi (mutual information, across contrasts) or lncc", METRICS),
        "levels": Option((8.0, 4.0, 2.0), "voxel size in mm of each pyramid level, coarse to fine", minimum=0.1, maximum=64),
        "iterations": Option(100, "Adam steps at the coarsest level, halved at each finer one (rigid, then again affine)",
                             minimum=1, maximum=MAX_ITERATIONS),
    }

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        from atlasreg.engine import affine_stage

        levels = tuple(float(mm) for mm in options["levels"])
        iterations = tuple(max(1, options["iterations"] // 2**i) for i in range(len(levels)))
        matrix = affine_stage(moving, fixed, levels=levels, rigid_iterations=iterations, affine_iterations=iterations, metric=options["metric"])
        return Transform.from_matrix(fixed, matrix)


@hookimpl
def atlasreg_backends():
    return [AffineBackend()]
