"""Volume <-> SimpleITK.Image. SimpleITK arrays are (k, j, i): transpose on the way in and out."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from atlasreg.itk_space import itk_geometry, ras_affine
from atlasreg.volume import Volume


def to_sitk(volume: Volume) -> sitk.Image:
    dtype = np.uint32 if volume.is_labels else np.float32
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.astype(dtype).transpose(2, 1, 0)))
    origin, spacing, direction = itk_geometry(volume.affine)
    img.SetOrigin(origin.tolist())
    img.SetSpacing(spacing.tolist())
    img.SetDirection(direction.flatten().tolist())
    return img


def from_sitk(img: sitk.Image, labels: bool = False) -> Volume:
    affine = ras_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    if labels:
        return Volume(np.ascontiguousarray(array.astype(np.int32)), affine, is_labels=True)
    return Volume(np.ascontiguousarray(array.astype(np.float32)), affine, is_labels=False)
