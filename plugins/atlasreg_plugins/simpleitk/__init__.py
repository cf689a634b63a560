"""SimpleITK plugin: the ``simpleitk`` (deformable) backend and ``staple`` label fusion."""

from atlasreg.hookspecs import hookimpl

from .backend import SimpleITKBackend
from .staple import Staple


@hookimpl
def atlasreg_backends():
    return [SimpleITKBackend()]


@hookimpl
def atlasreg_fusions():
    return [Staple()]
