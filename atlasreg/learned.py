"""What every learned (network) backend shares: the working grid, the affine pre-alignment, model
files, inference and instance optimisation. A plugin supplies only its network and loss terms.

Learned backends see affinely pre-aligned pairs on a fixed working grid: an axis-aligned grid of
``spacing`` mm and ``shape`` voxels centred on the fixed image's brain. The core's ``affine``
backend maps fixed to moving world first; the network's field u (on the working grid) is then
composed with it into one Transform on the fixed image's own grid: T(x) = A · (x + u(x)).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .plugin_api import MAX_ITERATIONS, Backend, Option
from .transform import Transform
from .volume import Volume, zscore

if TYPE_CHECKING:
    from .recipe import TrainingPair

MODEL_FORMAT = 1


def working_grid(fixed: Volume, spacing: float, shape: tuple[int, int, int]) -> Volume:
    """An axis-aligned RAS grid (empty Volume) of ``shape`` voxels at ``spacing`` mm centred on the
    intensity-weighted centre of ``fixed``'s non-zero voxels (its brain, once skull-stripped)."""
    mask = fixed.array > 0
    centre_voxel = np.array(ndimage.center_of_mass(mask)) if mask.any() else (np.array(fixed.shape) - 1) / 2.0
    centre = fixed.affine[:3, :3] @ centre_voxel + fixed.affine[:3, 3]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2.0
    return Volume(np.zeros(shape, np.float32), affine, is_labels=False)


def covering_shape(fixed: Volume, spacing: float, margin: int = 4) -> tuple[int, int, int]:
    """Shape of the ``working_grid`` at ``spacing`` mm that holds all of ``fixed``'s non-zero voxels,
    plus ``margin`` voxels each side (the grid is centred on their centre of mass, not their box)."""
    mask = fixed.array > 0
    voxels = np.argwhere(mask) if mask.any() else np.array([[0, 0, 0], np.array(fixed.shape) - 1])
    centre = np.array(ndimage.center_of_mass(mask)) if mask.any() else voxels.mean(0)
    corners = np.array([[lo, hi] for lo, hi in zip(voxels.min(0), voxels.max(0))])
    corners = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1)
    reach = np.abs(fixed.affine[:3, :3] @ (corners - centre[:, None])).max(1)
    return tuple(int(n) for n in np.ceil(2 * reach / spacing) + 1 + 2 * margin)  # type: ignore[return-value]


@dataclass(frozen=True)
class AlignedPair:
    """A moving/fixed pair on one working grid, intensities z-scored; ``matrix`` = the affine stage."""

    moving: np.ndarray
    fixed: np.ndarray
    grid: Volume
    matrix: np.ndarray
    moving_labels: np.ndarray | None = None


def align_pair(
    moving: Volume,
    fixed: Volume,
    spacing: float,
    shape: tuple[int, int, int],
    moving_labels: Volume | None = None,
    matrix: np.ndarray | None = None,
    device: str = "cpu",
) -> AlignedPair:
    """The core's affine stage (unless ``matrix`` is given; run on ``device``), then both images
    resampled onto the working grid."""
    grid = working_grid(fixed, spacing, shape)
    if matrix is None:
        from .engine import affine_stage

        matrix = affine_stage(moving, fixed, device=device)
    on_grid = Transform.from_matrix(grid, matrix)
    fixed_w = Transform.identity(grid).warp(fixed)
    moving_w = on_grid.warp(moving)
    labels_w = on_grid.warp_labels(moving_labels).array if moving_labels is not None else None
    return AlignedPair(zscore(moving_w).array, zscore(fixed_w).array, grid, matrix, labels_w)


def transform_from_flow(flow_voxels, pair: AlignedPair, fixed: Volume) -> Transform:
    """The network's flow (3, X, Y, Z, working-grid voxels; NumPy or a torch tensor on any device)
    composed with the affine stage, on ``fixed``'s grid.

    The field is resampled onto ``fixed``'s grid with torch (linear, border values beyond the
    working grid), on the flow's own device: on a GPU this step costs milliseconds, not seconds.
    """
    import torch
    import torch.nn.functional as F

    flow = torch.as_tensor(flow_voxels).float()
    spacing = float(pair.grid.affine[0, 0])  # axis-aligned RAS grid: voxels -> mm
    to_working = torch.as_tensor(np.linalg.inv(pair.grid.affine) @ fixed.affine, dtype=torch.float32, device=flow.device)
    axes = [torch.arange(n, dtype=torch.float32, device=flow.device) for n in fixed.shape]
    i, j, k = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    working = flow.shape[1:]
    normalised = []
    for c in (2, 1, 0):  # grid_sample wants (z, y, x) order, each in [-1, 1] across the working grid
        coord = to_working[c, 0] * i + to_working[c, 1] * j + to_working[c, 2] * k + to_working[c, 3]
        normalised.append(coord * (2.0 / (working[c] - 1)) - 1.0)
    grid = torch.stack(normalised, dim=-1)[None]
    field = F.grid_sample(flow[None] * spacing, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return Transform.from_field(fixed, field.permute(1, 2, 3, 0).cpu().numpy(), pair.matrix)


def pick_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AtlasregError("device cuda requested but no CUDA GPU is visible")
    if name not in ("cpu", "cuda"):
        raise AtlasregError(f"device {name!r}: choose auto, cpu or cuda")
    return name


def save_model(path: str | os.PathLike, backend: str, config: Mapping[str, Any], network, extra: Mapping[str, Any] | None = None) -> Path:
    """Write weights + full config + atlasreg version as plain tensors and primitives (no pickled code)."""
    import torch

    from . import __version__
    from .io import atomic_path

    path = Path(path)
    state = {
        "format": MODEL_FORMAT,
        "backend": backend,
        "atlasreg_version": __version__,
        "config": dict(config),
        "weights": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        **(extra or {}),
    }
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
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT or "weights" not in state:
        raise AtlasregError(f"{path}: not an atlasreg model file")
    return state


@lru_cache(maxsize=4)
def _cached_network(backend: "LearnedBackend", path: str, device: str, mtime_ns: int, size: int):
    """One loaded network per (backend, model file version, device): ``segment`` with N atlases
    reads and builds the model once, not N times. Callers never modify it (instance optimisation
    refines the velocity field, not the weights)."""
    state = load_model_file(path)
    if state["backend"] != backend.name:
        raise AtlasregError(f"{path}: a {state['backend']} model, not a {backend.name} model")
    config = backend.config(state["config"])
    network = backend.build_network(config)
    backend.load_weights(network, config, state["weights"], path)
    return network.to(device).eval(), config


class LearnedBackend(Backend):
    """A network backend. Subclasses set ``default_config`` and implement ``build_network``,
    ``network_terms`` and ``image_similarity``."""

    kind = "learned"
    devices = ("cpu", "cuda")
    requires = ("torch",)
    deterministic = True  # on CPU (tested): inference draws nothing, training is seeded
    options = {
        "model": Option("", "model name (see `atlasreg models`) or file written by `atlasreg train`; default: the shipped model"),
        "device": Option("auto", "where the network runs", ("auto", "cpu", "cuda")),
        "optimize_steps": Option(0, "instance optimisation: refine the network's velocity field on the pair at hand by N Adam steps",
                                 minimum=0, maximum=MAX_ITERATIONS),
        "optimize_lr": Option(0.2, "Adam step size (voxels) of instance optimisation", minimum=0, exclusive_minimum=True),
    }
    default_config: ClassVar[dict[str, Any]] = {}
    #: loss term names, in the order they are reported
    loss_names: ClassVar[tuple[str, ...]] = ()
    #: the name of the image similarity term (the data term of image pairs; label maps use ``dice``)
    image_term: ClassVar[str] = "sim"
    #: config keys that fix the network's weight shapes (named when a model file does not fit)
    architecture_keys: ClassVar[tuple[str, ...]] = ()

    def build_network(self, config: Mapping[str, Any]):
        """The untrained torch module for ``config``."""
        raise NotImplementedError

    def network_terms(self, network, pair: TrainingPair, config: Mapping[str, Any], sample: bool) -> tuple[Any, dict[str, Any]]:
        """(flow in voxels (B, 3, X, Y, Z), the backend's own unweighted loss terms: its smoothness
        and any other term) for a batch; ``sample`` draws z in training. Calls ``network`` once (its
        ``forward`` computes all the loss needs: one call under DDP). The data term is not here:
        ``loss_terms`` adds it."""
        raise NotImplementedError

    def image_similarity(self, fixed, warped, config: Mapping[str, Any]):
        """The backend's image term (lower is better), named ``image_term``: the data term of image pairs."""
        raise NotImplementedError

    def needs_view(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config``'s loss needs ``TrainingPair.fixed_view`` (a second rendering of the fixed labels)."""
        return False

    def loss_terms(self, network, pair: TrainingPair, config: Mapping[str, Any], sample: bool) -> tuple[Any, dict[str, Any]]:
        """``network_terms`` plus the data term every learned backend shares: ``dice`` (label overlap,
        ``atlasreg.recipe.label_overlap``) where the pair carries labels (``--synth``), the backend's
        image similarity (``image_term``) otherwise. Synthesized pairs get no image similarity: their two
        images have independent contrasts."""
        from .flow import warp
        from .recipe import label_overlap

        flow, terms = self.network_terms(network, pair, config, sample)
        if pair.moving_labels is not None:
            terms["dice"] = label_overlap(pair.moving_labels, pair.fixed_labels, flow)
        else:
            terms[self.image_term] = self.image_similarity(pair.fixed, warp(pair.moving, flow), config)
        return flow, terms

    def mean_flow(self, network, moving, fixed, config: Mapping[str, Any]):
        """The deterministic flow in voxels (B, 3, X, Y, Z) (the mean transformation), no loss terms:
        every network's ``forward`` returns its ``velocity`` and that velocity's exponential, ``flow``."""
        return network(moving, fixed)["flow"]

    def predict_velocity(self, network, moving, fixed, config: Mapping[str, Any]):
        """The network's stationary velocity field ``(B, 3, X, Y, Z)`` (working-grid voxels; a
        probabilistic model's mean): the start of instance optimisation."""
        return network(moving, fixed)["velocity"]

    def predict_flow(self, network, moving, fixed, config: Mapping[str, Any]):
        """``mean_flow`` without gradients: inference computes only the flow."""
        import torch

        with torch.no_grad():
            return self.mean_flow(network, moving, fixed, config)

    # --- shared machinery -------------------------------------------------------------------
    def config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Default config with ``overrides``; unknown keys are refused. A dict value (``weights``)
        updates the default dict: a model file written before a term existed gets its default weight."""
        merged = copy.deepcopy(self.default_config)
        for key, value in (overrides or {}).items():
            if key not in merged:
                raise AtlasregError(f"{self.name}: unknown config key {key!r} (known: {', '.join(sorted(merged))})")
            if isinstance(merged[key], dict) and isinstance(value, dict):
                merged[key].update(value)
            else:
                merged[key] = value
        return merged

    def total_loss(self, terms: Mapping[str, Any], config: Mapping[str, Any]):
        """Weighted sum of the enabled terms (``config['losses']``, weights ``config['weights']``)."""
        enabled = [name for name in config["losses"] if name in terms]
        if not enabled:
            raise AtlasregError(f"{self.name}: no loss term enabled (choose from {', '.join(self.loss_names)})")
        unweighted = [name for name in enabled if name not in config["weights"]]
        if unweighted:
            raise AtlasregError(f"{self.name}: no weight for loss term(s) {', '.join(unweighted)} (give --weight NAME=VALUE)")
        return sum(config["weights"][name] * terms[name] for name in enabled)

    def load_weights(self, network, config: Mapping[str, Any], weights: Mapping[str, Any], path: str | os.PathLike) -> None:
        """``weights`` (of the model file ``path``) into ``network``, built from ``config``; weights that
        do not fit (size mismatch, missing or unexpected keys) raise one line naming the architecture."""
        try:
            network.load_state_dict(weights)
        except RuntimeError as exc:
            first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            described = ", ".join(f"{key}={config[key]}" for key in self.architecture_keys)
            raise AtlasregError(f"{path}: its weights do not fit the {self.name} network its config describes "
                                f"({described}): {first}") from None

    def load_network(self, path: str | os.PathLike, device: str):
        """(network in eval mode on ``device``, config) from a model file; cached while the file is unchanged."""
        path = Path(path)
        if not path.is_file():
            raise AtlasregError(f"{path}: no such model file")
        stat = path.stat()
        return _cached_network(self, str(path.resolve()), device, stat.st_mtime_ns, stat.st_size)

    def check_options(self, resolved: Mapping[str, Any]) -> None:
        """The model (a name, a file, or the shipped default when none is given) must exist, match
        its checksum and load into this backend's network: a missing, damaged or unfit model is
        found before any atlas is built or pair run, not hours later."""
        from .models import resolve

        self.load_network(resolve(self.name, resolved["model"]), "cpu")

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        import torch

        from .models import resolve

        device = pick_device(options["device"])
        network, config = self.load_network(resolve(self.name, options["model"]), device)
        pair = align_pair(moving, fixed, config["spacing"], tuple(config["shape"]))
        moving_t = torch.from_numpy(pair.moving)[None, None].to(device)
        fixed_t = torch.from_numpy(pair.fixed)[None, None].to(device)
        if options["optimize_steps"] > 0:
            flow = self.optimize(network, moving_t, fixed_t, config, options["optimize_steps"], options["optimize_lr"])
        else:
            flow = self.predict_flow(network, moving_t, fixed_t, config)
        return transform_from_flow(flow[0], pair, fixed)

    def optimize(self, network, moving, fixed, config: Mapping[str, Any], steps: int, lr: float):
        """Instance optimisation: the network's velocity (detached; the weights stay as trained) refined
        on this one pair by the engine's optimiser (LNCC + diffusion, Adam): three quarters of the
        steps on the grid half as fine as the working grid, the last quarter on the working grid
        (20 steps: 0.711 Dice on validation pair 01 -> 07 vs 0.709 for a half/half split, in about
        2/3 of the time). Returns the flow."""
        import torch

        from .engine import displacement, optimize_velocity

        with torch.no_grad():
            velocity = self.predict_velocity(network, moving, fixed, config)
        refined = optimize_velocity(moving, fixed, velocity, levels=(2, 1), iterations=(steps - steps // 4, steps // 4), lr=lr)
        return displacement(refined, moving.shape[2:])
