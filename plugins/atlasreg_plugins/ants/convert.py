"""Volume <-> ANTsImage. ANTs arrays index like nibabel's (i, j, k); only the world frame differs."""

from __future__ import annotations

import numpy as np

from atlasreg.itk_space import itk_geometry, ras_affine
from atlasreg.volume import Volume

from .threads import import_ants


def to_ants(volume: Volume):
    ants = import_ants()

    origin, spacing, direction = itk_geometry(volume.affine)
    array = volume.array.astype(np.uint32 if volume.is_labels else np.float32)
    return ants.from_numpy(array, origin=origin.tolist(), spacing=spacing.tolist(), direction=direction)


def from_ants(img, labels: bool = False) -> Volume:
    affine = ras_affine(img.origin, img.spacing, img.direction)
    array = img.numpy()
    if labels:
        return Volume(np.rint(array).astype(np.int32), affine, is_labels=True)
    return Volume(array.astype(np.float32), affine, is_labels=False)
