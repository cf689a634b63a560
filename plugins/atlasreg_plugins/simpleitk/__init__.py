"""SimpleITK plugin: the ``affine`` and ``simpleitk`` (deformable) backends and ``staple`` label fusion."""

from atlasreg.hookspecs import hookimpl

from .affine import AffineBackend
from .backend import SimpleITKBackend
from .staple import Staple


@hookimpl
def atlasreg_backends():
    return [AffineBackend(), SimpleITKBackend()]


@hookimpl
def atlasreg_fusions():
    return [Staple()]
