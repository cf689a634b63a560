"""atlasreg's optimisation engine (torch): an affine stage and a diffeomorphic velocity-field optimiser.

Both optimise with Adam on a multi-resolution pyramid, in the spirit of FireANTs, on top of the
functional core ``atlasreg.flow``. Everything runs on the device of the input tensors; nothing
leaves it inside an optimisation loop. Importing this package does not import torch (its
``defaults`` are read when plugins are collected); the functions below load it on first use.
"""

from importlib import import_module

_HOMES = {"affine_stage": ".affine", "displacement": ".velocity", "optimize_velocity": ".velocity"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
