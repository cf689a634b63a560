"""The ``affine`` backend: affine-only registration (SimpleITK), the baseline every deformable method must beat.

It is the ``simpleitk`` plugin's affine stage on its own, so it lives in (and is registered by) that plugin.
"""

from __future__ import annotations

from typing import Any

from atlasreg.plugin_api import MAX_ITERATIONS, MAX_SEED, MAX_SHRINK, Backend, Option
from atlasreg.transform import Transform
from atlasreg.volume import Volume


class AffineBackend(Backend):
    name = "affine"
    description = "rigid then 12-parameter affine, Mattes mutual information, multi-resolution (SimpleITK)"
    requires = ("SimpleITK",)
    deterministic = True  # single-threaded (threads.py)
    options = {
        "iterations": Option(100, "optimizer iterations per resolution level", minimum=1, maximum=MAX_ITERATIONS),
        "shrink_factors": Option((4, 2, 1), "downsampling factor per level, coarse to fine", minimum=1, maximum=MAX_SHRINK),
        "sampling": Option(0.05, "fraction of voxels sampled for the metric", minimum=0, exclusive_minimum=True, maximum=1),
        "seed": Option(1, "seed for the metric's random sampling (SimpleITK reads 0 as 'the clock')", minimum=1, maximum=MAX_SEED),
    }

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        from .affine_stage import affine_to_ras, register_affine
        from .convert import to_sitk

        levels = options["shrink_factors"]
        affine = register_affine(
            to_sitk(fixed),
            to_sitk(moving),
            iterations=options["iterations"],
            shrink_factors=levels,
            smoothing_mm=tuple(float(f) if f > 1 else 0.0 for f in levels),
            sampling=options["sampling"],
            seed=options["seed"],
        )
        return Transform.from_matrix(fixed, affine_to_ras(affine))

