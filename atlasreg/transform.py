"""Transform: the one spatial-transform type every backend returns.

A backward mapping from the fixed (target) grid into moving space, in RAS millimetres:

    T(x) = M · (x + u(x))

where ``u`` is a dense displacement field sampled on the fixed grid (``field``, shape X×Y×Z×3,
optional) and ``M`` a 4x4 affine (``matrix``, identity by default). Warping a moving volume onto
the fixed grid is sampling it at T(x). This is the ITK/ANTs convention: a point goes through the
deformable part first, then the affine.

A Transform made by a velocity-field backend keeps its stationary velocity ``v`` (the field is
``exp(v)``): its inverse is then exact, ``exp(-v)``. Any other field is inverted numerically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .io import ImageLike, _check_nifti_path, as_volume, atomic_path
from .itk_space import itk_affine_kind, itk_geometry, read_itk_affine
from .spatial import apply_matrix, sample, sample_torch, voxel_grid
from .volume import Volume

_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0], dtype=np.float32)
_NIFTI_INTENT_VECTOR = 1007
ITK_AFFINE_SUFFIXES = (".mat", ".txt", ".tfm")
#: ITK's HDF5 transform files: ANTs' composite transforms (``--write-composite-transform``), fMRIPrep's ``_xfm.h5``
ITK_COMPOSITE_SUFFIXES = (".h5", ".hdf5")
#: numerical inversion: stop when every point maps back within this many mm, or after this many rounds
INVERSE_TOLERANCE_MM, INVERSE_MAX_ITERATIONS = 0.01, 50


@dataclass(frozen=True)
class Velocity:
    """A stationary velocity field ``v`` on a working grid: ``exp(v)`` (scaling and squaring in
    ``steps`` squarings) is a Transform's deformable part, and ``exp(-v)`` its exact inverse.

    ``array`` is (3, X', Y', Z') in voxels of a grid over the working grid's extent (outer voxel
    edges shared, ``flow.resize``'s convention); ``shape`` and ``affine`` are the working grid's.
    """

    array: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.asarray(self.array, dtype=np.float32))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))

    def exponential(self, sign: float = 1.0) -> "Transform":
        """``exp(sign * v)`` as a field-only Transform on the working grid (displacements in mm)."""
        import torch

        from .flow import integrate, resize

        velocity = torch.from_numpy(np.ascontiguousarray(self.array * np.float32(sign)))[None]
        flow = resize(integrate(velocity, self.steps), self.shape)[0].permute(1, 2, 3, 0).numpy()
        return Transform(self.shape, self.affine, flow @ self.affine[:3, :3].T.astype(np.float32))


@dataclass(frozen=True)
class Transform:
    """Backward map T(x) = matrix · (x + field(x)) from fixed-grid points to moving space (RAS mm)."""

    shape: tuple[int, int, int]
    grid_affine: np.ndarray
    field: np.ndarray | None = None
    matrix: np.ndarray = dataclass_field(default_factory=lambda: np.eye(4))
    #: the velocity ``field`` is the exponential of, when a velocity-field backend made it
    velocity: Velocity | None = None
    #: how this transform was obtained as another's inverse ("" when it was not)
    inversion: str = ""
    #: where warping runs: None, NumPy on the CPU; "cuda" (or "cpu"), torch on that device (float32
    #: coordinates, labels gathered as integers), set by a backend that ran there so the warp stays on its GPU
    device: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "grid_affine", np.asarray(self.grid_affine, dtype=np.float64))
        object.__setattr__(self, "matrix", np.asarray(self.matrix, dtype=np.float64))
        if self.field is not None:
            field = np.asarray(self.field, dtype=np.float32)
            if field.shape != (*self.shape, 3):
                raise AtlasregError(f"displacement field shape {field.shape} does not match grid {self.shape}")
            if not np.all(np.isfinite(field)):
                raise AtlasregError("displacement field contains NaN or infinite values")
            object.__setattr__(self, "field", field)

    @classmethod
    def identity(cls, grid: Volume) -> "Transform":
        return cls(grid.shape, grid.affine)

    @classmethod
    def from_matrix(cls, grid: Volume, matrix: np.ndarray) -> "Transform":
        """An affine-only transform on ``grid``'s points: fixed world -> moving world."""
        return cls(grid.shape, grid.affine, None, matrix)

    @classmethod
    def from_field(cls, grid: Volume, field: np.ndarray, matrix: np.ndarray | None = None) -> "Transform":
        return cls(grid.shape, grid.affine, field, np.eye(4) if matrix is None else matrix)

    # --- mapping points -------------------------------------------------------------------
    def grid_points(self) -> np.ndarray:
        """World (RAS mm) position of every fixed-grid voxel, (X, Y, Z, 3) float32."""
        return apply_matrix(self.grid_affine, voxel_grid(self.shape))

    def mapped_points(self) -> np.ndarray:
        """T(x) for every fixed-grid voxel x: where in moving space each voxel pulls from."""
        points = self.grid_points()
        if self.field is not None:
            points += self.field
        return apply_matrix(self.matrix, points)

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """T at arbitrary world points (..., 3); the field is interpolated linearly (edge values outside)."""
        points = np.asarray(points, dtype=np.float32)
        if self.field is not None:
            voxels = np.moveaxis(apply_matrix(np.linalg.inv(self.grid_affine), points), -1, 0)
            displacement = np.stack(
                [ndimage.map_coordinates(self.field[..., c], voxels, order=1, mode="nearest") for c in range(3)], -1
            )
            points = points + displacement
        return apply_matrix(self.matrix, points)

    def displacement(self) -> np.ndarray:
        """Total displacement T(x) - x on the fixed grid, (X, Y, Z, 3) mm; the affine folded in."""
        return self.mapped_points() - self.grid_points()

    # --- warping --------------------------------------------------------------------------
    def _moving_voxels(self, moving: Volume) -> np.ndarray:
        """Moving-grid voxel coordinates of T(x); matrices chained in float64 so identity stays exact."""
        to_voxels = np.linalg.inv(moving.affine) @ self.matrix
        coords = apply_matrix(to_voxels @ self.grid_affine, voxel_grid(self.shape))
        if self.field is not None:
            coords += self.field @ to_voxels[:3, :3].T.astype(np.float32)
        return coords

    def _moving_voxels_torch(self, moving: Volume):
        """:meth:`_moving_voxels` as a float32 tensor computed on ``self.device``."""
        import torch

        to_voxels = np.linalg.inv(moving.affine) @ self.matrix
        full = to_voxels @ self.grid_affine

        def tensor(array: np.ndarray):
            return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=self.device)

        axes = [torch.arange(n, dtype=torch.float32, device=self.device) for n in self.shape]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) @ tensor(full[:3, :3].T) + tensor(full[:3, 3])
        if self.field is not None:
            coords += tensor(self.field) @ tensor(to_voxels[:3, :3].T)
        return coords

    def _sample(self, volume: Volume, interp: str = "nearest") -> np.ndarray:
        """``volume``'s values at T(x) for every fixed voxel x: NumPy, or torch on ``device``."""
        if self.device is None:
            return sample(volume, self._moving_voxels(volume), interp)
        return sample_torch(volume, self._moving_voxels_torch(volume), interp)

    def warp(self, image: ImageLike) -> Volume:
        """Intensity image (a Volume, a path, a nibabel image or an (array, affine) pair) resampled
        onto the fixed grid (linear; 0 outside the moving volume)."""
        image = as_volume(image, False, "image")
        if image.is_labels:
            raise AtlasregError("warp() is for intensity images; use warp_labels() for label maps")
        return Volume(self._sample(image), self.grid_affine, is_labels=False)

    def warp_labels(self, labels: ImageLike, interp: str = "nearest") -> Volume:
        """Label map (any ``ImageLike``, as :meth:`warp`) resampled onto the fixed grid; ``nearest`` or
        ``onehot`` keep the exact label set."""
        labels = as_volume(labels, True, "label map")
        if not labels.is_labels:
            raise AtlasregError("warp_labels() needs an integer label map")
        return Volume(self._sample(labels, interp), self.grid_affine, is_labels=True)

    def on_grid(self, grid: ImageLike) -> "Transform":
        """The same map evaluated at ``grid``'s points (the field interpolated linearly, edge values
        outside its grid): warping with it puts the moving volume on ``grid`` (any ``ImageLike``)."""
        grid = as_volume(grid, False, "grid")
        if self.shape == grid.shape and np.allclose(self.grid_affine, grid.affine, atol=1e-6):
            return self
        field = None
        if self.field is not None:
            points = Transform.identity(grid).grid_points()
            field = Transform(self.shape, self.grid_affine, self.field).map_points(points) - points
        return Transform(grid.shape, grid.affine, field, self.matrix, self.velocity, device=self.device)

    def inverse(self, grid: ImageLike) -> "Transform":
        """The inverse map on ``grid`` (a grid of the moving space, any ``ImageLike``): warping a
        fixed-space volume with it puts that volume on ``grid``. ``inversion`` says how it was obtained:

        * affine only: the matrix inverted (exact);
        * a velocity field's exponential (``velocity`` set): ``exp(-v)`` (exact up to integration);
        * any other field: x + u(x) = y solved by fixed-point iteration, x <- y - u(x) (converges
          where the field is smooth, ``|grad u| < 1``); the largest residual left is reported.
        """
        grid = as_volume(grid, False, "grid")
        points = Transform.identity(grid).grid_points()
        start = apply_matrix(np.linalg.inv(self.matrix), points)  # y -> M^-1 y: undo the affine first
        if self.field is None:
            return Transform(grid.shape, grid.affine, None, np.linalg.inv(self.matrix), inversion="exact: the matrix inverted", device=self.device)
        if self.velocity is not None:
            mapped = self.velocity.exponential(-1.0).map_points(start)
            return Transform(grid.shape, grid.affine, mapped - points, inversion="exact: the velocity field negated, exp(-v)", device=self.device)
        deformable = Transform(self.shape, self.grid_affine, self.field)
        found, rounds, residual = _fixed_point(deformable, start.reshape(-1, 3))
        return Transform(grid.shape, grid.affine, found.reshape(points.shape) - points, device=self.device,
                         inversion=f"numerical: fixed-point iteration, {rounds} rounds, largest residual {residual:.3g} mm")

    # --- algebra ----------------------------------------------------------------------------
    def compose(self, inner: "Transform") -> "Transform":
        """self ∘ inner: a point goes through ``inner`` first, then ``self``; lives on ``inner``'s grid."""
        if self.field is None:
            return Transform(inner.shape, inner.grid_affine, inner.field, self.matrix @ inner.matrix, device=inner.device)
        points = self.map_points(inner.mapped_points())
        return Transform(inner.shape, inner.grid_affine, points - inner.grid_points(), device=inner.device)

    def jacobian_determinant(self) -> np.ndarray:
        """det of dT/dx at every fixed voxel (world mm); ≤ 0 marks folding."""
        det_matrix = float(np.linalg.det(self.matrix[:3, :3]))
        if self.field is None:
            return np.full(self.shape, det_matrix, dtype=np.float32)
        to_voxel = np.linalg.inv(self.grid_affine[:3, :3]).astype(np.float32)
        # grads[..., c, a] = d u_c / d (voxel axis a); chain rule to world axes
        grads = np.stack([np.stack(np.gradient(self.field[..., c]), -1) for c in range(3)], -2)
        jac = grads @ to_voxel + np.eye(3, dtype=np.float32)
        return (np.linalg.det(jac) * det_matrix).astype(np.float32)

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the total displacement as an ITK-convention NIfTI warp (X×Y×Z×1×3, LPS vectors).

        ANTs (antsApplyTransforms, ants.apply_transforms) and SimpleITK read it as a displacement
        field transform on the fixed grid.
        """
        path = Path(path)
        _check_nifti_path(path)
        data = (self.displacement() * _RAS_TO_LPS)[:, :, :, None, :]
        img = nib.Nifti1Image(data.astype(np.float32), self.grid_affine)
        img.set_qform(self.grid_affine, code=1)
        img.set_sform(self.grid_affine, code=1)
        img.header.set_intent(_NIFTI_INTENT_VECTOR)
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, grid: Volume | None = None) -> "Transform":
        """Read a transform file: an ITK-convention NIfTI displacement field (as written by
        :meth:`save`, ANTs or SimpleITK), on its own grid; or an ITK affine (ANTs' ``.mat``, ITK
        text ``.txt`` / ``.tfm``), which has no grid of its own: it is put on ``grid``."""
        path = Path(path)
        if not path.exists():
            raise AtlasregError(f"{path}: no such file")
        if path.suffix in (*ITK_AFFINE_SUFFIXES, *ITK_COMPOSITE_SUFFIXES):
            if grid is None:
                raise AtlasregError(f"{path}: an ITK transform file has no grid of its own; give a reference image")
            if path.suffix in ITK_AFFINE_SUFFIXES and itk_affine_kind(path):
                return cls.from_matrix(grid, read_itk_affine(path))
            return cls(grid.shape, grid.affine, _itk_displacement(path, grid))
        if not path.name.endswith((".nii", ".nii.gz")):
            raise AtlasregError(f"{path}: expected a NIfTI displacement field (.nii, .nii.gz) or an ITK transform file "
                                f"({', '.join((*ITK_AFFINE_SUFFIXES, *ITK_COMPOSITE_SUFFIXES))})")
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:
            raise AtlasregError(f"{path}: not a readable NIfTI file ({exc})") from None
        if data.ndim == 5 and data.shape[3] == 1:
            data = data[:, :, :, 0, :]
        if data.ndim != 4 or data.shape[-1] != 3:
            raise AtlasregError(f"{path}: not a 3-D displacement field (shape {data.shape})")
        return cls(data.shape[:3], img.affine, data * _RAS_TO_LPS)


def _itk_displacement(path: Path, grid: Volume) -> np.ndarray:
    """The displacement (RAS mm, X×Y×Z×3) at ``grid``'s points of any transform ITK reads from ``path``
    (composite, rigid, B-spline, displacement field...), through SimpleITK (the ``itk`` extra)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise AtlasregError(f"{path}: reading this transform file needs SimpleITK (not installed): pip install 'atlasreg[itk]'") from None

    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise AtlasregError(f"{path}: not a transform file ITK reads ({str(exc).strip().splitlines()[-1]})") from None
    if transform.GetDimension() != 3:
        raise AtlasregError(f"{path}: a {transform.GetDimension()}-D transform; a 3-D one is needed")
    origin, spacing, direction = itk_geometry(grid.affine)
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    to_field.SetSize([int(n) for n in grid.shape])
    to_field.SetOutputOrigin(origin.tolist())
    to_field.SetOutputSpacing(spacing.tolist())
    to_field.SetOutputDirection(direction.ravel().tolist())
    field = sitk.GetArrayFromImage(to_field.Execute(transform)).transpose(2, 1, 0, 3)  # (z, y, x) -> (x, y, z)
    return field.astype(np.float32) * _RAS_TO_LPS


def _fixed_point(deformable: Transform, targets: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Points x with x + u(x) = ``targets`` (N, 3), by x <- x - (x + u(x) - target) until each is
    within ``INVERSE_TOLERANCE_MM``. Returns (x, rounds run, largest residual left in mm)."""
    found = targets.copy()
    active = np.arange(len(targets))
    largest, rounds = 0.0, 0
    while len(active):
        error = deformable.map_points(found[active]) - targets[active]
        size = np.linalg.norm(error, axis=-1)
        done = size <= INVERSE_TOLERANCE_MM
        if done.all() or rounds == INVERSE_MAX_ITERATIONS:
            largest = max(largest, float(size.max()))
            break
        if done.any():
            largest = max(largest, float(size[done].max()))
        found[active[~done]] -= error[~done]
        active = active[~done]
        rounds += 1
    return found, rounds, largest
