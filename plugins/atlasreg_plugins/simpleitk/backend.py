"""The ``simpleitk`` backend: affine, then a deformable SimpleITK method on the pre-aligned pair.

- ``demons`` (default): diffeomorphic demons, coarse to fine, after histogram matching — fast and
  topology-preserving for same-modality images;
- ``bspline``: a free-form B-spline deformation optimised on Mattes mutual information — slower,
  works across contrasts.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from atlasreg.errors import AtlasregError
from atlasreg.logs import steps
from atlasreg.plugin_api import MAX_ITERATIONS, MAX_SEED, MAX_SHRINK, Backend, Option
from atlasreg.transform import Transform
from atlasreg.volume import Volume

METHODS = ("demons", "bspline")


class SimpleITKBackend(Backend):
    # (class attributes every method declares: alike in shape with its sibling, the duplicates report lists the pair)
    name = "simpleitk"
    description = "affine + diffeomorphic demons or B-spline (SimpleITK)"
    requires = ("SimpleITK",)
    install = "pip install 'atlasreg[itk]'"
    deterministic = True  # single-threaded (threads.py)
    options = {
        "method": Option("demons", "deformable method after the affine stage", METHODS),
        "iterations": Option((100, 50, 25), "iterations per resolution level, coarse to fine", minimum=1, maximum=MAX_ITERATIONS),
        "shrink_factors": Option((4, 2, 1), "downsampling factor per level, coarse to fine", minimum=1, maximum=MAX_SHRINK),
        "smoothing": Option(1.5, "demons: Gaussian std (voxels) regularising the displacement field", minimum=0),
        "grid_mm": Option(20.0, "bspline: control-point spacing in mm", minimum=0, exclusive_minimum=True),
        "affine_iterations": Option(100, "iterations per level of the affine stage", minimum=1, maximum=MAX_ITERATIONS),
        "seed": Option(1, "seed for random metric sampling (SimpleITK reads 0 as 'the clock')", minimum=1, maximum=MAX_SEED),
    }

    def check_options(self, resolved: Mapping[str, Any]) -> None:
        if len(resolved["iterations"]) != len(resolved["shrink_factors"]):
            raise AtlasregError(f"simpleitk: iterations and shrink_factors need one value per level each "
                                f"(got {len(resolved['iterations'])} and {len(resolved['shrink_factors'])})")

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        import SimpleITK as sitk

        from .affine_stage import affine_to_ras, register_affine
        from .convert import to_sitk
        from .threads import single_threaded

        fixed_img, moving_img = to_sitk(fixed), to_sitk(moving)
        affine = register_affine(fixed_img, moving_img, iterations=options["affine_iterations"], seed=options["seed"])
        levels = list(zip(options["shrink_factors"], options["iterations"]))
        with single_threaded():  # reproducible: same inputs and seed, same field
            aligned = sitk.Resample(moving_img, fixed_img, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            if options["method"] == "demons":
                field = _demons(fixed_img, aligned, levels, options["smoothing"])
            else:
                field = _bspline(fixed_img, aligned, levels, options["grid_mm"], options["seed"])
        # SimpleITK arrays are (k, j, i, c) with LPS vectors; the Transform wants (i, j, k, c) in RAS
        array = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3).astype(np.float32)
        array[..., :2] *= -1
        return Transform.from_field(fixed, np.ascontiguousarray(array), affine_to_ras(affine))


def _demons(fixed, moving, levels, smoothing: float):
    """Diffeomorphic demons, coarse to fine; returns the displacement field image on the fixed grid."""
    import SimpleITK as sitk

    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.HistogramMatching(sitk.Cast(moving, sitk.sitkFloat32), fixed, 256, 15, True)
    field = None
    for shrink, iterations in levels:
        f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 0.5 * shrink), [shrink] * 3) if shrink > 1 else fixed
        m = sitk.Resample(moving if shrink == 1 else sitk.SmoothingRecursiveGaussian(moving, 0.5 * shrink), f)
        init = (
            sitk.Image(f.GetSize(), sitk.sitkVectorFloat64)
            if field is None
            else sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        )
        init.CopyInformation(f)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SmoothDisplacementFieldOn()
        demons.SetStandardDeviations(smoothing)
        demons.SetUseImageSpacing(True)
        with steps(int(iterations), f"demons, 1/{shrink} size") as bar:  # drawn in a study or register(progress=True)
            demons.AddCommand(sitk.sitkIterationEvent, lambda: bar.update())
            field = demons.Execute(f, m, init)
    return sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)


def _bspline(fixed, moving, levels, grid_mm: float, seed: int):
    """B-spline free-form deformation on Mattes MI; returns its dense displacement field on the fixed grid."""
    import SimpleITK as sitk

    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    extent = [sz * sp for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / grid_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=int(max(i for _, i in levels)))
    method.SetShrinkFactorsPerLevel([s for s, _ in levels])
    method.SetSmoothingSigmasPerLevel([0.5 * s if s > 1 else 0.0 for s, _ in levels])
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
