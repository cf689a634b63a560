"""SVF plugin: the ``svf`` backend, diffeomorphic registration by optimisation in torch (needs torch)."""

from atlasreg.hookspecs import hookimpl

from .backend import SvfBackend


@hookimpl
def atlasreg_backends():
    return [SvfBackend()]
