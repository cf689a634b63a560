"""RAS (NIfTI, atlasreg) <-> LPS (ITK: ANTs, SimpleITK) geometry: the ITK-based plugins and the reading of ITK transform files share it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AtlasregError

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


#: ITK transform types whose 12 parameters are a 3x3 matrix (row by row) and a translation
_AFFINE_TYPES = ("AffineTransform", "MatrixOffsetTransformBase")


def itk_affine_kind(path: Path) -> bool:
    """Whether an ITK text transform file (``.txt``, ``.tfm``) holds one 3-D affine (read exactly by
    :func:`read_itk_affine`); ANTs' ``.mat`` files are always taken for one."""
    if path.suffix == ".mat":
        return True
    try:
        kinds = [line.split(":", 1)[1].strip() for line in path.read_text(errors="replace").splitlines() if line.startswith("Transform:")]
    except OSError as exc:
        raise AtlasregError(f"{path}: cannot read ({exc.strerror})") from None
    return len(kinds) == 1 and kinds[0].startswith(_AFFINE_TYPES) and kinds[0].endswith("_3_3")


def read_itk_affine(path: Path) -> np.ndarray:
    """4x4 RAS point map (fixed world -> moving world) of an ITK affine transform file: ANTs'
    ``.mat`` (MATLAB v4) or ITK's text format (``.txt``, ``.tfm``), as ANTs and SimpleITK write them."""
    try:
        if path.suffix == ".mat":
            from scipy.io import loadmat

            content = {key: np.asarray(value, dtype=float).ravel() for key, value in loadmat(str(path)).items() if not key.startswith("__")}
            kind = next((key for key in content if key != "fixed"), "")
            parameters, fixed = content.get(kind), content.get("fixed")
        else:
            fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line and not line.startswith("#"))
            kind = fields.get("Transform", "").strip()
            parameters = np.array(fields.get("Parameters", "").split(), dtype=float)
            fixed = np.array(fields.get("FixedParameters", "").split(), dtype=float)
    except Exception as exc:  # scipy and the text parser raise many types for a damaged file
        raise AtlasregError(f"{path}: not a readable ITK transform file ({exc})") from None
    if not kind.startswith(_AFFINE_TYPES) or not kind.endswith("_3_3") or parameters is None or len(parameters) != 12 or fixed is None or len(fixed) != 3:
        raise AtlasregError(f"{path}: an ITK transform of type {kind or 'unknown'!r}; only 3-D {' / '.join(_AFFINE_TYPES)} files are read")
    return ras_matrix_from_lps(itk_affine_to_matrix(parameters[:9].reshape(3, 3), parameters[9:], fixed))
