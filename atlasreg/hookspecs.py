"""The hooks a plugin implements. A plugin is a module registered under the
``atlasreg.plugins`` entry-point group that implements one or both hooks with ``@hookimpl``."""

from __future__ import annotations

import pluggy

from .plugin_api import Backend, Fusion

hookspec = pluggy.HookspecMarker("atlasreg")
hookimpl = pluggy.HookimplMarker("atlasreg")


@hookspec
def atlasreg_backends() -> list[Backend]:
    """Return the registration backends this plugin provides."""


@hookspec
def atlasreg_fusions() -> list[Fusion]:
    """Return the label-fusion methods this plugin provides."""
