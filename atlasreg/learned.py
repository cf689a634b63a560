"""What every learned (network) backend shares: loading its model, inference and instance
optimisation. A plugin supplies only its network and loss terms.

Learned backends see affinely pre-aligned pairs on a fixed working grid (``atlasreg.engine.grid``);
``LearnedBackend.predict`` turns such a pair into a Transform on the target's own grid, for
``register``, training validation and the benchmarks alike.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from .engine.defaults import SIMILARITIES
from .engine.grid import AlignedPair, align_pair, pick_device, similarity_target, transform_from_flow, working_grid
from .errors import AtlasregError
from .learned_config import check_config
from .models import load_model_file, resolve
from .plugin_api import MAX_ITERATIONS, Backend, Option
from .transform import Transform
from .volume import Volume

if TYPE_CHECKING:
    from .recipe import TrainingPair


@lru_cache(maxsize=4)
def _cached_network(backend: "LearnedBackend", path: str, device: str, mtime_ns: int, size: int):
    """One loaded network per (backend, model file version, device): ``segment`` with N atlases
    reads and builds the model once, not N times. Callers never modify it (instance optimisation
    refines the velocity field, not the weights)."""
    state = load_model_file(path)
    if state["backend"] != backend.name:
        raise AtlasregError(f"{path}: a {state['backend']} model, not a {backend.name} model")
    try:  # checked as options are: a value no network can run with is named
        config = backend.config(state["config"])
        network = backend.build_network(config)
    except AtlasregError as exc:
        raise AtlasregError(f"{path}: {exc}") from None
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
        "optimize_similarity": Option("lncc", "what instance optimisation matches: lncc (one contrast, or contrasts whose "
                                      "intensities map one to one inside the brain, e.g. a T1 atlas and a T2-like target); "
                                      "mind (MIND-SSC descriptors: any two contrasts, e.g. T1 and FLAIR; slower)", SIMILARITIES),
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
        check_config(self.name, self.loss_names, self.default_config, merged)
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
        self.load_network(resolve(self.name, resolved["model"]), "cpu")

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        device = pick_device(options["device"])
        network, config = self.load_network(resolve(self.name, options["model"]), device)
        pair = align_pair(moving, fixed, working_grid(fixed, config["spacing"], tuple(config["shape"])), device=device)
        return self.predict(network, config, pair, fixed, device, options["optimize_steps"], options["optimize_lr"],
                            options["optimize_similarity"])

    def predict(self, network, config: Mapping[str, Any], pair: AlignedPair, target: Volume, device: str,
                optimize_steps: int = 0, optimize_lr: float = 0.2, optimize_similarity: str = "lncc") -> Transform:
        """The Transform on ``target``'s grid for an aligned pair: the network's flow (refined by
        ``optimize_steps`` steps of instance optimisation when > 0) composed with the affine stage.
        What ``register``, training validation and the benchmarks all run."""
        import torch

        moving = torch.from_numpy(pair.moving)[None, None].to(device)
        fixed = torch.from_numpy(pair.fixed)[None, None].to(device)
        if optimize_steps > 0:
            flow = self.optimize(network, moving, fixed, config, optimize_steps, optimize_lr, optimize_similarity)
        else:
            flow = self.predict_flow(network, moving, fixed, config)
        return transform_from_flow(flow[0], pair, target)

    def optimize(self, network, moving, fixed, config: Mapping[str, Any], steps: int, lr: float, similarity: str = "lncc"):
        """Instance optimisation: the network's velocity (detached; the weights stay as trained) refined
        on this one pair by the engine's optimiser (``similarity`` + diffusion, Adam; against the fixed
        image as :func:`~atlasreg.engine.grid.similarity_target` prepares it, as ``svf`` does): three quarters of the
        steps on the grid half as fine as the working grid, the last quarter on the working grid
        (20 steps: 0.711 Dice on validation pair 01 -> 07 vs 0.709 for a half/half split, in about
        2/3 of the time). Returns the flow.

        Where the network's own flow fits the pair worse than no displacement at all on the
        optimiser's similarity (a contrast it never saw can make its field worse than nothing),
        the optimisation starts from zero instead: it never starts below the affine stage."""
        import torch

        from .engine import displacement, optimize_velocity
        from .engine.defaults import SVF_WINDOW
        from .engine.velocity import similarity_terms
        from .flow import integrate, warp

        with torch.no_grad():
            velocity = self.predict_velocity(network, moving, fixed, config)
            target = torch.from_numpy(similarity_target(moving[0, 0].cpu().numpy(), fixed[0, 0].cpu().numpy(), similarity))
            target = target[None, None].to(fixed.device)
            features, reference, dissimilarity = similarity_terms(similarity, SVF_WINDOW)  # what optimize_velocity minimises
            flow = integrate(velocity, int(config["int_steps"]), int(config["int_downsize"]))
            prepared = reference(features(target))
            if dissimilarity(prepared, features(warp(moving, flow))) > dissimilarity(prepared, features(moving)):
                velocity = None
        refined = optimize_velocity(moving, target, velocity, levels=(2, 1), iterations=(steps - steps // 4, steps // 4), lr=lr,
                                    similarity=similarity)
        return displacement(refined, moving.shape[2:])
