"""The checks every learned backend's config passes, wherever it comes from (``atlasreg train``'s
options, ``-C KEY=VALUE``, or a model file being loaded), so that a bad value is refused in one
line naming the key instead of reaching torch as NaN, an empty network or gigabytes of grid.

Each value must have its default's kind: a number a finite number (an integer where the default
is one), a list a non-empty list of such, a text a text; the ranges below hold on top.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .errors import AtlasregError

#: the working grid's voxels at most: 16 times the default 96 x 112 x 96, beyond any brain at 1 mm
#: (its activations then take gigabytes; a model file asking for more is refused before allocating)
MAX_WORKING_VOXELS = 2**24
MIN_GRID = 16  # voxels along each axis of the working grid and the training crop
#: integer keys with a range of their own; every other integer is a count (channels, points) in 1..4096
INT_RANGES = {"int_steps": (0, 16), "int_downsize": (1, 8)}
MAX_COUNT = 4096


def check_config(backend: str, loss_names: Sequence[str], defaults: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse a ``config`` value (merged over ``defaults``) a network of ``backend`` cannot run with."""
    for key, value in config.items():
        _check_kind(backend, key, defaults[key], value)
    for key in ("shape", "crop"):
        if key in config and len(config[key]) != 3:
            raise AtlasregError(f"{backend}: config {key}={config[key]!r}: expected three numbers X,Y,Z")
    if "shape" in config:
        voxels = math.prod(config["shape"])
        if voxels > MAX_WORKING_VOXELS:
            raise AtlasregError(f"{backend}: config shape={config['shape']!r}: a working grid of {voxels} voxels; "
                                f"more than {MAX_WORKING_VOXELS} (256^3) would take gigabytes of network activations")
        if "crop" in config and any(c > s for c, s in zip(config["crop"], config["shape"])):
            raise AtlasregError(f"{backend}: config crop={config['crop']!r}: larger than the working grid shape={config['shape']!r}")
    unknown = [name for name in [*config.get("losses", ()), *config.get("weights", {})] if name not in loss_names]
    if unknown:
        raise AtlasregError(f"{backend}: unknown loss term {unknown[0]!r} (known: {', '.join(loss_names)})")
    if "losses" in config and not config["losses"]:
        raise AtlasregError(f"{backend}: config losses=[]: enable at least one of {', '.join(loss_names)}")


def _check_kind(backend: str, key: str, default: Any, value: Any) -> None:
    where = f"{backend}: config {key}={value!r}"
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            raise AtlasregError(f"{where}: expected {'true or false' if isinstance(default, bool) else 'text'}")
    elif isinstance(default, (int, float)):
        _check_number(where, key, default, value)
    elif isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise AtlasregError(f"{where}: expected a non-empty list")
        for item in value if default else ():
            _check_kind(backend, key, default[0], item)
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise AtlasregError(f"{where}: expected a mapping of names to numbers")
        for name, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not (math.isfinite(number) and number >= 0):
                raise AtlasregError(f"{backend}: config {key} {name}={number!r}: must be a finite number >= 0")


def _check_number(where: str, key: str, default: int | float, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AtlasregError(f"{where}: must be a finite number")
    if isinstance(default, float):
        if value <= 0:
            raise AtlasregError(f"{where}: must be > 0")
        return
    if not isinstance(value, int):
        raise AtlasregError(f"{where}: must be a whole number")
    low, high = INT_RANGES.get(key, (MIN_GRID, 1024) if key in ("shape", "crop") else (1, MAX_COUNT))
    if not low <= value <= high:
        raise AtlasregError(f"{where}: must be {low} to {high}")
