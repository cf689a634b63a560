"""Contrastive plugin: the ``contrastive`` backend, the paper's model (needs torch)."""

from atlasreg.hookspecs import hookimpl

from .backend import ContrastiveBackend


@hookimpl
def atlasreg_backends():
    return [ContrastiveBackend()]
