"""RAS (NIfTI, atlasreg) <-> LPS (ITK: ANTs, SimpleITK) geometry, shared by the ITK-based plugins."""

from __future__ import annotations

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, spacing and 3x3 direction (LPS) of the grid whose RAS voxel-to-world matrix is ``affine``."""
    lps = RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return lps[:3, 3].copy(), spacing, direction


def ras_affine(origin, spacing, direction) -> np.ndarray:
    """Inverse of :func:`itk_geometry`."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    lps[:3, 3] = origin
    return RAS_TO_LPS @ lps


def ras_matrix_from_lps(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 point map expressed in LPS world coordinates, re-expressed in RAS."""
    return RAS_TO_LPS @ matrix_lps @ RAS_TO_LPS


def itk_affine_to_matrix(matrix: np.ndarray, translation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 (LPS) of ITK's MatrixOffsetTransform: p -> M (p - c) + c + t."""
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + center - matrix @ center
    return out
