"""Named models: the weights a learned backend runs with, declared by plugins (``atlasreg_models``
hook) or given as a file.

The model file format (``save_model``/``load_model_file``) lives here too: weights, config and
version as plain tensors and primitives, read with ``weights_only=True``.

``resolve(backend, spec)`` turns what a user wrote (``--model NAME``, ``--model PATH`` or nothing)
into a model file: nothing means the backend's default model (shipped as package data by its
plugin); a declared name is checked against its SHA-256 before use, so a truncated or swapped
file is refused with a clear error instead of producing wrong labels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from ._version import __version__
from .errors import AtlasregError
from .io import atomic_path, file_digest
from .plugin_api import ModelSpec
from .registry import get_backend, registry

__all__ = ["list_models", "get_model", "default_model", "resolve", "verify", "sha256", "publish", "save_model", "load_model_file",
           "weights_sha256"]

MODEL_FORMAT = 1


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def save_model(path: str | os.PathLike, backend: str, config: Mapping[str, Any], network, extra: Mapping[str, Any] | None = None) -> Path:
    """Write weights + full config + atlasreg version as plain tensors and primitives (no pickled code)."""
    import torch

    path = Path(path)
    state = {
        "format": MODEL_FORMAT,
        "backend": backend,
        "atlasreg_version": __version__,
        "config": dict(config),
        "weights": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        **(extra or {}),
    }
    state["weights_sha256"] = weights_sha256(state["weights"])
    if not path.parent.is_dir():
        raise AtlasregError(f"{path.parent}: output folder does not exist")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_model_file(path: str | os.PathLike) -> dict:
    """Read a model file with ``weights_only=True``: a file holding pickled objects is refused.

    A torch archive (a zip file) that the weights-only loader rejects holds more than tensors and
    plain values: that behaviour, not the wording of torch's message (it changes between
    versions), is what tells a refused file from one that is not a model at all.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise AtlasregError(f"{path}: no such model file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):
            raise AtlasregError(f"{path}: refused: the file holds pickled Python objects, not plain weights") from None
        raise AtlasregError(f"{path}: not an atlasreg model file") from None
    except Exception as exc:
        raise AtlasregError(f"{path}: not an atlasreg model file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT or not isinstance(state.get("weights"), dict):
        raise AtlasregError(f"{path}: not an atlasreg model file")
    expected = state.get("weights_sha256")  # files written before the checksum existed have none
    if expected is not None and _weights_sha256_or_none(state["weights"]) != expected:
        raise AtlasregError(f"{path}: its weights do not match the checksum it was written with: the file is damaged; refusing it")
    return state


def weights_sha256(weights: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's tensors (each one's name, dtype, shape and bytes, in name order):
    a model file carries it and is checked against it on load, so damage after writing is found."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weights_sha256_or_none(weights: Mapping[str, Any]) -> str | None:
    """``weights_sha256``, or None where ``weights`` are not all tensors (a damaged or foreign file)."""
    try:
        return weights_sha256(weights)
    except (AttributeError, TypeError, RuntimeError):
        return None


def list_models() -> list[tuple[ModelSpec, str]]:
    """Every declared model with the plugin that declares it, sorted by name."""
    return [registry().models()[name] for name in sorted(registry().models())]


def model_table() -> list[dict[str, Any]]:
    """``atlasreg models``: every declared model as a row (its declaration, plugin and ``status``:
    ``ok``, or why its file fails the checksum check)."""
    rows = []
    for spec, plugin in list_models():
        try:
            verify(spec)
            status = "ok"
        except AtlasregError as exc:
            status = str(exc)
        rows.append({"name": spec.name, "backend": spec.backend, "default": spec.default, "description": spec.description,
                     "file": spec.file, "sha256": spec.sha256, "plugin": plugin, "status": status})
    return rows


def model_table_text(rows: list[dict[str, Any]]) -> str:
    """:func:`model_table` as ``atlasreg models`` prints it: name, backend, status, description."""
    lines = []
    for row in rows:
        default = f" (default for {row['backend']})" if row["default"] else ""
        lines += [f"{row['name']:<22} {row['backend']:<12} {row['status']}{default}", f"{'':<22} {row['description']}"]
    return "\n".join(lines)


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
    state = load_model_file(model_file)
    backend = get_backend(state["backend"])
    config = backend.config(state["config"])
    network = backend.build_network(config)
    network.load_state_dict(state["weights"])
    extra = {key: state[key] for key in ("step", "training") if key in state}
    return sha256(save_model(output, state["backend"], config, network, extra))
