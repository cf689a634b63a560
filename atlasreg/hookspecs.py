"""The hooks a plugin implements. A plugin is a module registered under the
``atlasreg.plugins`` entry-point group (or in code, :func:`atlasreg.registry.register_plugin`)
that implements any of them with ``@hookimpl``. Each returns a list of named things; two plugins
declaring one name is an error."""

from __future__ import annotations

import pluggy

from .plugin_api import Backend, Fusion, ModelSpec

hookspec = pluggy.HookspecMarker("atlasreg")
hookimpl = pluggy.HookimplMarker("atlasreg")


@hookspec
def atlasreg_backends() -> list[Backend]:
    """Return the registration backends this plugin provides."""


@hookspec
def atlasreg_fusions() -> list[Fusion]:
    """Return the label-fusion methods this plugin provides."""


@hookspec
def atlasreg_models() -> list[ModelSpec]:
    """Return the named models (weights of a learned backend) this plugin declares."""


@hookspec
def atlasreg_protocols() -> list:
    """Return the scoring protocols (:class:`atlasreg.protocols.Protocol`) this plugin provides."""


@hookspec
def atlasreg_atlases() -> list:
    """Return the built-in atlases (:class:`atlasreg.atlases.BuiltinAtlas`: made on this machine, no download) this plugin provides."""


@hookspec
def atlasreg_dataset_readers() -> list:
    """Return the dataset readers (:class:`atlasreg.datasets.DatasetReader`) this plugin provides."""
