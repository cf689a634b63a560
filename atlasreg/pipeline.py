"""The verbs: register a moving image to a fixed one, segment a target from labelled atlases."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence, Tuple, Union

from tqdm import tqdm

import nibabel as nib
import numpy as np

from .errors import AtlasregError
from .io import from_array, load
from .registry import get_backend, get_fusion
from .transform import Transform
from .volume import Volume

#: a Volume, a NIfTI path, a nibabel image, or an (array, affine) pair
ImageLike = Union[Volume, str, os.PathLike, nib.spatialimages.SpatialImage, Tuple[np.ndarray, np.ndarray]]
Atlas = Tuple[ImageLike, ImageLike]


def _as_volume(value: ImageLike, labels: bool, what: str) -> Volume:
    if isinstance(value, Volume):
        return value
    if isinstance(value, nib.spatialimages.SpatialImage):
        return from_array(np.asanyarray(value.dataobj), value.affine, labels, what)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
        return from_array(value[0], np.asarray(value[1]), labels, what)
    if isinstance(value, (str, os.PathLike)):
        return load(value, labels=labels)
    raise AtlasregError(f"{what}: expected a path, a Volume, a nibabel image or (array, affine), got {type(value).__name__}")


def as_image(value: ImageLike, what: str = "image") -> Volume:
    """An intensity-image Volume from any ``ImageLike``."""
    volume = _as_volume(value, False, what)
    if volume.is_labels:
        raise AtlasregError(f"{what}: expected an intensity image, got a label map")
    if not volume.array.any():
        raise AtlasregError(f"{what}: image is empty (all zero)")
    return volume


def as_labels(value: ImageLike, what: str = "label map") -> Volume:
    """A label-map Volume from any ``ImageLike``."""
    volume = _as_volume(value, True, what)
    if not volume.is_labels:
        raise AtlasregError(f"{what}: expected a label map, got an intensity image")
    if not volume.array.any():
        raise AtlasregError(f"{what}: label map is empty (no non-zero label)")
    return volume


def register(
    moving: ImageLike, fixed: ImageLike, backend: str = "ants", options: Mapping[str, Any] | None = None
) -> Transform:
    """Register ``moving`` to ``fixed``; the Transform lives on ``fixed``'s grid and pulls ``moving`` onto it.

    ``options``: the backend's options (``atlasreg options BACKEND``), as ``segment``'s ``backend_options``.
    """
    method = get_backend(backend)
    resolved = method.resolve_options(options or {})
    fixed_v, moving_v = as_image(fixed, "fixed image"), as_image(moving, "moving image")
    transform = method.register(moving_v, fixed_v, **resolved)
    if transform.shape != fixed_v.shape:
        raise AtlasregError(f"backend {backend!r} returned a transform on the wrong grid")
    return transform


def load_atlases(atlases: Iterable[Atlas]) -> list[tuple[Volume, Volume]]:
    """Each (image, labels) pair loaded and checked to share one grid."""
    loaded = []
    for index, (image, labels) in enumerate(atlases, start=1):
        image_v = as_image(image, f"atlas {index} image")
        labels_v = as_labels(labels, f"atlas {index} labels")
        if not image_v.same_grid(labels_v):
            raise AtlasregError(f"atlas {index}: image and label map are on different grids (shape or affine differ)")
        loaded.append((image_v, labels_v))
    if not loaded:
        raise AtlasregError("no atlas given: pass at least one (image, labels) pair")
    return loaded


def segment(
    target: ImageLike,
    atlases: Sequence[Atlas] | None = None,
    backend: str = "ants",
    fusion: str = "majority",
    backend_options: Mapping[str, Any] | None = None,
    fusion_options: Mapping[str, Any] | None = None,
    label_interp: str = "nearest",
    progress: bool = False,
    builtin_atlas: str | None = None,
) -> Volume:
    """Label ``target`` by registering each atlas to it and fusing the warped atlas labels.

    ``atlases`` None means the built-in atlas ``builtin_atlas`` (default: the MNI152 template with
    Desikan-Killiany labels, built from installed packages' data). Returns an integer label map in
    the target's grid and affine. One atlas needs no fusion.
    """
    if atlases is not None and builtin_atlas:
        raise AtlasregError("give atlases or a built-in atlas name, not both")
    method = get_backend(backend)
    resolved = method.resolve_options(backend_options or {})
    fuser = get_fusion(fusion)  # checked with one atlas too: a typo should not pass silently
    fusion_resolved = fuser.resolve_options(fusion_options or {})
    if atlases is None:
        from .atlases import DEFAULT_ATLAS, load_atlas

        image, labels, _ = load_atlas(builtin_atlas or DEFAULT_ATLAS)
        atlases = [(image, labels)]
    target_v = as_image(target, "target image")
    pairs = load_atlases(atlases)
    several = len(pairs) > 1
    warped_images, warped_labels = [], []
    for image, labels in tqdm(pairs, desc=f"registering atlases ({backend})", unit="atlas", disable=not progress):
        transform = method.register(image, target_v, **resolved)
        warped_labels.append(transform.warp_labels(labels, label_interp))
        if several:
            warped_images.append(transform.warp(image))
    if not several:
        return warped_labels[0]
    return fuser.fuse(target_v, warped_images, warped_labels, **fusion_resolved)
