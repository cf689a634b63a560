"""ANTs plugin: the ``ants`` registration backend and ``jlf`` joint label fusion (antspyx)."""

from atlasreg.hookspecs import hookimpl

from .backend import AntsBackend
from .jlf import JointLabelFusion


# (Declarations alike in shape across plugins by design: the duplicates report lists them as a pair.)
@hookimpl
def atlasreg_backends():
    return [AntsBackend()]


@hookimpl
def atlasreg_fusions():
    return [JointLabelFusion()]
