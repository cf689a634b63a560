"""ANTs plugin: the ``ants`` registration backend and ``jlf`` joint label fusion (antspyx)."""

from atlasreg.hookspecs import hookimpl

from .backend import AntsBackend
from .jlf import JointLabelFusion
from .threads import use_one_thread_by_default

use_one_thread_by_default()


@hookimpl
def atlasreg_backends():
    return [AntsBackend()]


@hookimpl
def atlasreg_fusions():
    return [JointLabelFusion()]
