"""atlasreg's optimisation engine (torch): an affine stage and a diffeomorphic velocity-field optimiser.

Both optimise with Adam on a multi-resolution pyramid, in the spirit of FireANTs, on top of the
functional core ``atlasreg.flow``. Everything runs on the device of the input tensors; nothing
leaves it inside an optimisation loop.
"""

from .affine import affine_stage
from .velocity import displacement, optimize_velocity

__all__ = ["affine_stage", "displacement", "optimize_velocity"]
