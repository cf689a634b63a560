"""Plugin discovery: every module in the ``atlasreg.plugins`` entry-point group is loaded into one
pluggy manager, and code registers more with :func:`register_plugin`. A plugin that fails to import
is remembered with its reason and listed as unavailable; it never takes the others down. Two
plugins declaring one name (a backend, fusion, model, protocol, atlas or dataset reader) is an
error naming both.

The core's own protocols, atlases and dataset readers are hook implementations in their modules
(:mod:`atlasreg.protocols`, :mod:`atlasreg.atlases`, :mod:`atlasreg.datasets`), which register
themselves here on their first look-up (:meth:`Registry.declared`): the registry imports none of them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import AtlasregError
from .plugin_api import Backend, Fusion, Method, ModelSpec

ENTRY_POINT_GROUP = "atlasreg.plugins"
#: what each hook declares, in words (for a clash's message)
KINDS = {"atlasreg_backends": "backend", "atlasreg_fusions": "fusion", "atlasreg_models": "model", "atlasreg_protocols": "protocol",
         "atlasreg_atlases": "atlas", "atlasreg_dataset_readers": "dataset reader"}

#: The backend used where none is named (``-b``, ``backend=``): a documented setting (README,
#: "Backends"), the one place the core names a plugin's method; the core imports no plugin, and a
#: default that is not installed fails as any unavailable backend does. ``svf``, the best fast
#: backend measured: on validation pair 01 -> 07 it matches ANTs ``quality`` (Dice 0.711 vs 0.712),
#: and in the engine benchmark it takes 13.7 s a pair to ANTs quality's 182.3 s (0.075x; 2 mm,
#: 2 CPU cores; benchmarks/RESULTS.md, "The torch engine" sections).
DEFAULT_BACKEND = "svf"
#: The label fusion used for several atlases where none is named (``-f``, ``fusion=``): ``majority``,
#: 0.2 s a target for 3 atlases (benchmarks/RESULTS.md, issue 2's fusion table).
DEFAULT_FUSION = "majority"


@dataclass(frozen=True)
class MethodInfo:
    """What ``atlasreg backends`` / ``atlasreg fusions`` show for one method."""

    name: str
    kind: str
    devices: tuple[str, ...]
    available: bool
    reason: str | None
    description: str
    plugin: str
    deterministic: bool

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "devices": list(self.devices),
            "available": self.available,
            "reason": self.reason,
            "description": self.description,
            "plugin": self.plugin,
            "deterministic": self.deterministic,
        }

    def text(self) -> str:
        """The method as ``atlasreg backends`` / ``fusions`` print it: name, kind, devices, status (and description)."""
        status = "available" if self.available else f"unavailable: {self.reason}"
        if self.available and not self.deterministic:
            status += " (not reproducible: results may differ run to run)"
        line = f"{self.name:<12} {self.kind:<10} {','.join(self.devices) or '-':<9} {status}"
        return f"{line}\n{'':<12} {self.description}" if self.description else line


class Registry:
    """The loaded plugins, their backends and fusion methods, and the plugins that failed to load.

    Each plugin's hooks are called once, here: every ``get_backend`` reuses the same instances.
    """

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("atlasreg")
        self.manager.add_hookspecs(hookspecs)
        self.failed: dict[str, str] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self.manager.has_plugin(ep.name):
                continue
            try:
                self.manager.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not break atlasreg
                self.failed[ep.name] = f"plugin failed to load: {type(exc).__name__}: {exc}"
        self._collect_methods()

    def _collect_methods(self) -> None:
        self._backends = self._collect(self.manager.hook.atlasreg_backends, Backend, "backend")
        self._fusions = self._collect(self.manager.hook.atlasreg_fusions, Fusion, "fusion")

    def _collect(self, hook, base: type, kind: str) -> dict[str, tuple]:
        """What every implementation of ``hook`` returns that is a ``base``, by name; a name two
        plugins declare is refused, naming both."""
        found: dict[str, tuple] = {}
        for impl in hook.get_hookimpls():  # in registration order
            try:
                items = impl.function()
            except Exception as exc:
                self.failed[impl.plugin_name] = f"plugin hook failed: {type(exc).__name__}: {exc}"
                continue
            for item in items:
                if not isinstance(item, base):
                    continue
                if item.name in found and found[item.name][1] != impl.plugin_name:
                    raise AtlasregError(f"{kind} {item.name!r} is declared by two plugins, {found[item.name][1]} and "
                                        f"{impl.plugin_name}: uninstall or rename one")
                found[item.name] = (item, impl.plugin_name)
        return found

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Add ``plugin`` (a module or object with ``@hookimpl`` functions); its name. Registering the
        same plugin again changes nothing; one whose names clash with another's is refused (and not kept)."""
        if name is not None and self.manager.get_plugin(name) is plugin:
            return name
        name = self.manager.register(plugin, name)
        try:
            self._collect_methods()
            for hook in ("atlasreg_models", "atlasreg_protocols", "atlasreg_atlases", "atlasreg_dataset_readers"):
                self._collect(getattr(self.manager.hook, hook), object, KINDS[hook])
        except AtlasregError:
            self.unregister_plugin(plugin)
            raise
        return name

    def unregister_plugin(self, plugin: Any) -> None:
        """Remove a plugin :meth:`register_plugin` added."""
        self.manager.unregister(plugin)
        self._collect_methods()

    def declared(self, hook: str, base: type, builtin: ModuleType) -> dict[str, Any]:
        """Name -> item of what the plugins' ``hook`` returns that is a ``base``, the core's module
        ``builtin`` (which implements the hook for atlasreg's own) registered first."""
        if not self.manager.has_plugin(builtin.__name__):
            self.manager.register(builtin, builtin.__name__)
        return {name: item for name, (item, _) in self._collect(getattr(self.manager.hook, hook), base, KINDS[hook]).items()}

    def backends(self) -> dict[str, tuple[Method, str]]:
        """Backend name -> (instance, plugin name)."""
        return self._backends

    def fusions(self) -> dict[str, tuple[Method, str]]:
        """Fusion name -> (instance, plugin name)."""
        return self._fusions

    def models(self) -> dict[str, tuple[ModelSpec, str]]:
        return self._collect(self.manager.hook.atlasreg_models, ModelSpec, "model")  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def registry() -> Registry:
    return Registry()


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions: backends, fusions, models,
    protocols, atlases, dataset readers) for this process, as an installed plugin would be; its name."""
    return registry().register_plugin(plugin, name)


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    registry().unregister_plugin(plugin)


def _infos(methods: dict[str, tuple[Method, str]], failed: dict[str, str]) -> list[MethodInfo]:
    infos = []
    for name, (method, plugin) in sorted(methods.items()):
        reason = method.unavailable_reason()
        infos.append(
            MethodInfo(
                name,
                getattr(method, "kind", "fusion"),
                getattr(method, "devices", ("cpu",)),
                reason is None,
                reason,
                method.description,
                plugin,
                method.deterministic,
            )
        )
    infos += [MethodInfo(name, "unknown", (), False, reason, "", name, False) for name, reason in sorted(failed.items())]
    return infos


def backend_infos() -> list[MethodInfo]:
    """Every registration backend, available or not, plus plugins that failed to load."""
    reg = registry()
    return _infos(reg.backends(), reg.failed)


def fusion_infos() -> list[MethodInfo]:
    """Every label-fusion method, available or not, plus plugins that failed to load."""
    reg = registry()
    return _infos(reg.fusions(), reg.failed)


def _get(kind: str, methods: dict[str, tuple[Method, str]], name: str) -> Method:
    if name not in methods:
        broken = registry().failed.get(name)
        if broken:
            raise AtlasregError(f"{kind} {name!r} is unavailable: {broken}")
        known = ", ".join(sorted(methods)) or "none"
        raise AtlasregError(f"unknown {kind} {name!r} (known: {known})")
    method = methods[name][0]
    reason = method.unavailable_reason()
    if reason:
        raise AtlasregError(f"{kind} {name!r} is unavailable: {reason}")
    return method


def get_backend(name: str) -> Backend:
    return _get("backend", registry().backends(), name)  # type: ignore[return-value]


def get_fusion(name: str) -> Fusion:
    return _get("fusion", registry().fusions(), name)  # type: ignore[return-value]


def get_method(name: str) -> Method:
    """The backend or fusion method ``name``, available here or not (to show its declared options)."""
    methods = {**registry().fusions(), **registry().backends()}
    if name not in methods:
        raise AtlasregError(f"unknown backend or fusion {name!r} (known: {', '.join(sorted(methods))})")
    return methods[name][0]
