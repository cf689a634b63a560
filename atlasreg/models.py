"""Named models: the weights a learned backend runs with, declared by plugins (``atlasreg_models``
hook) or given as a file.

``resolve(backend, spec)`` turns what a user wrote (``--model NAME``, ``--model PATH`` or nothing)
into a model file: nothing means the backend's default model (shipped as package data by its
plugin); a declared name is checked against its SHA-256 before use, so a truncated or swapped
file is refused with a clear error instead of producing wrong labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import AtlasregError
from .plugin_api import ModelSpec
from .registry import registry

__all__ = ["list_models", "get_model", "default_model", "resolve", "verify", "sha256", "publish"]


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_models() -> list[tuple[ModelSpec, str]]:
    """Every declared model with the plugin that declares it, sorted by name."""
    return [registry().models()[name] for name in sorted(registry().models())]


def get_model(name: str) -> ModelSpec:
    models = registry().models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise AtlasregError(f"unknown model {name!r} (known: {known}; or give a model file path)")
    return models[name][0]


def default_model(backend: str) -> ModelSpec | None:
    """The model ``backend`` uses when none is given, if a plugin declares one."""
    for spec, _ in list_models():
        if spec.backend == backend and spec.default:
            return spec
    return None


def verify(spec: ModelSpec) -> Path:
    """The model's file, after checking it exists and its SHA-256 matches the declaration."""
    path = Path(spec.file)
    if not path.is_file():
        raise AtlasregError(f"model {spec.name!r}: its file {path} is missing (reinstall the plugin that declares it)")
    actual = sha256(path)
    if actual != spec.sha256:
        raise AtlasregError(f"model {spec.name!r}: {path} does not match its declared SHA-256 "
                            f"(expected {spec.sha256[:12]}..., got {actual[:12]}...): refusing a damaged or replaced file")
    return path


def resolve(backend: str, spec: str) -> Path:
    """The model file for ``backend``: ``spec`` is '' (the default model), a declared name, or a path."""
    if not spec:
        default = default_model(backend)
        if default is None:
            raise AtlasregError(f"{backend}: no model given and none shipped: --model NAME|PATH "
                                f"(see `atlasreg models`, or train one with `atlasreg train -b {backend}`)")
        return verify(default)
    if spec in registry().models():
        model = get_model(spec)
        if model.backend != backend:
            raise AtlasregError(f"model {spec!r} is a {model.backend} model, not a {backend} model")
        return verify(model)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise AtlasregError(f"model {spec!r}: neither a declared model name (see `atlasreg models`) nor an existing file")
    return path


def publish(model_file: str | Path, output: str | Path) -> str:
    """Write the shippable part of a training checkpoint (weights, config, step, training settings;
    no optimiser state) to ``output`` and return its SHA-256, for a plugin's ``ModelSpec``."""
    from .learned import load_model_file, save_model
    from .registry import get_backend

    state = load_model_file(model_file)
    backend = get_backend(state["backend"])
    config = backend.config(state["config"])
    network = backend.build_network(config)
    network.load_state_dict(state["weights"])
    extra = {key: state[key] for key in ("step", "training") if key in state}
    return sha256(save_model(output, state["backend"], config, network, extra))
