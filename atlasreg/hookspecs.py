"""The hooks a plugin implements. A plugin is a module registered under the
``atlasreg.plugins`` entry-point group that implements any of them with ``@hookimpl``."""

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
