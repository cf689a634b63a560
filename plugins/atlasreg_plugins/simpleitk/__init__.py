"""SimpleITK plugin: the ``simpleitk`` (deformable) backend and ``staple`` label fusion."""

from atlasreg.hookspecs import hookimpl

from .backend import SimpleITKBackend
from .staple import Staple


# (Declarations alike in shape across plugins by design: the duplicates report lists them as a pair.)
@hookimpl
def atlasreg_backends():
    return [SimpleITKBackend()]


@hookimpl
def atlasreg_fusions():
    return [Staple()]
