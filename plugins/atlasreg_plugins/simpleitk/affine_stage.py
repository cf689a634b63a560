"""Multi-resolution affine registration with SimpleITK: the stage every deformable method starts from."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from atlasreg.itk_space import itk_affine_to_matrix, ras_matrix_from_lps

from .threads import single_threaded


def register_affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    iterations: int = 100,
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    smoothing_mm: tuple[float, ...] = (4.0, 2.0, 0.0),
    sampling: float = 0.05,
    seed: int = 1,
) -> sitk.AffineTransform:
    """Affine map of fixed points into moving space (LPS), Mattes mutual information.

    Starts from the centres of mass (moments) so large offsets between native-space heads are
    recovered, then a rigid stage, then the full affine from the rigid result (as
    antsRegistrationSyN does): going straight to 12 parameters let shear and scale absorb a
    rotation on some native-space pairs (Dice 0.34 instead of 0.53 on one shared-map pair).
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)

    def optimise(transform: sitk.Transform) -> sitk.Transform:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling, seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(list(shrink_factors))
        method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
        return transform

    with single_threaded():  # reproducible: same inputs and seed, same transform
        rigid = optimise(
            sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
        )
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        return optimise(affine)


def affine_to_ras(transform: sitk.AffineTransform) -> np.ndarray:
    """4x4 RAS matrix of an ITK affine (fixed world -> moving world)."""
    lps = itk_affine_to_matrix(
        np.asarray(transform.GetMatrix()).reshape(3, 3),
        np.asarray(transform.GetTranslation()),
        np.asarray(transform.GetCenter()),
    )
    return ras_matrix_from_lps(lps)
