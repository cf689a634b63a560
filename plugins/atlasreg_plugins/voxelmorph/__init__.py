"""VoxelMorph plugin: the ``voxelmorph`` learned baseline backend (needs torch)."""

from atlasreg.hookspecs import hookimpl

from .backend import VoxelMorphBackend


@hookimpl
def atlasreg_backends():
    return [VoxelMorphBackend()]
