"""One training loop for every learned backend (``atlasreg train``).

Pairs: with an atlas, atlas -> each subject (what segmentation needs); without, random pairs of
subjects, all first affinely aligned to the first subject. The affine stage runs once per subject
and its matrix is cached on disk (keyed by file contents), so epochs, resumed runs and other models
trained on the same images never recompute it. Augmentation as
in the paper, applied to both images of a pair alike: random flip along y, rotation < 10°, random
crop. Every loss term of every step goes to a JSON-lines log; the model file is rewritten after
each epoch, with the optimiser state, so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .errors import AtlasregError
from .io import check_output
from .learned import AlignedPair, LearnedBackend, align_pair, load_model_file, pick_device, save_model, transform_from_flow
from .metrics import evaluate
from .pipeline import as_image, as_labels
from .registry import get_backend
from .volume import Volume


@dataclass
class TrainSettings:
    """Everything about a run that is not the model's own config."""

    images: Sequence[Path]
    output: Path
    atlas: tuple[Path, Path] | None = None
    epochs: int = 200
    iterations: int = 0  # > 0: stop after this many optimiser steps, whatever the epochs
    max_minutes: float = 0.0  # > 0: stop (and save) after this much wall-clock time
    batch_size: int = 8
    lr: float = 3e-3
    lr_step: int = 20  # epochs between learning-rate decays (the paper: x0.1 every 20 epochs)
    lr_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None
    val_images: Sequence[Path] = ()
    val_labels: Sequence[Path] = ()
    val_protocol: str = "aseg"
    cache_dir: Path | None = None
    log: Path | None = None
    progress: bool = True
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values that would train nothing, loop forever or reach torch as nonsense."""
        at_least = {"epochs": 1, "batch_size": 1, "lr_step": 1, "iterations": 0, "max_minutes": 0, "seed": 0}
        for name, lowest in at_least.items():
            value = getattr(self, name)
            if not math.isfinite(value) or value < lowest:
                raise AtlasregError(f"{name} must be at least {lowest} (got {value})")
        for name in ("lr", "lr_gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AtlasregError(f"{name} must be a number > 0 (got {value})")


#: part of every cache key: bump when the affine stage (algorithm or default options) changes, so old matrices are not reused
AFFINE_STAGE_VERSION = 3  # 2: rigid stage before the affine one; 3: the torch affine stage (atlasreg.engine)


def _content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes: the cache follows the data, not its path (copies and moves still hit)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def aligned(
    moving_path: Path,
    fixed_path: Path,
    spacing: float,
    shape: tuple[int, int, int],
    cache_dir: Path,
    identity: bool = False,
) -> AlignedPair:
    """``align_pair`` of two files; the affine stage's matrix is read from / written to ``cache_dir``.

    Only the matrix is cached (a few bytes per pair, keyed by both files' contents): it is the slow
    part; resampling onto the working grid takes a fraction of a second and is redone each run.
    """
    matrix = np.eye(4) if identity else None
    if matrix is None:
        key = hashlib.sha1(f"{AFFINE_STAGE_VERSION}:{_content_hash(moving_path)}:{_content_hash(fixed_path)}".encode()).hexdigest()[:20]
        cached = cache_dir / f"affine-{key}.json"
        if cached.exists():
            matrix = np.array(json.loads(cached.read_text())["matrix"], dtype=float)
    pair = align_pair(as_image(moving_path), as_image(fixed_path), spacing, shape, matrix=matrix)
    if matrix is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps({"moving": str(moving_path), "fixed": str(fixed_path), "matrix": pair.matrix.tolist()}))
        tmp.replace(cached)
    return pair


class PairSource:
    """Training pairs as arrays on the working grid: atlas -> subject, or subject -> subject."""

    def __init__(self, settings: TrainSettings, config: Mapping[str, Any]) -> None:
        spacing, shape = float(config["spacing"]), tuple(config["shape"])
        cache = settings.cache_dir or settings.output.with_name(settings.output.name + ".cache")
        images = [Path(p) for p in settings.images]
        if len(images) < (1 if settings.atlas else 2):
            raise AtlasregError("training needs at least one image with --atlas, or two without")
        self.atlas_mode = settings.atlas is not None
        pending = tqdm(images, desc="affine pre-alignment (cached)", unit="image", disable=not settings.progress)
        if self.atlas_mode:
            atlas_image = Path(settings.atlas[0])
            self.pairs = [aligned(atlas_image, image, spacing, shape, cache) for image in pending]
            self.volumes: list[np.ndarray] = []
        else:
            reference = images[0]
            self.pairs = []
            self.volumes = [aligned(image, reference, spacing, shape, cache, identity=image == reference).moving for image in pending]

    def __len__(self) -> int:
        return len(self.pairs) if self.atlas_mode else len(self.volumes)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(moving, fixed) for the index-th draw of an epoch."""
        if self.atlas_mode:
            pair = self.pairs[index]
            return pair.moving, pair.fixed
        i = index
        j = int(rng.integers(len(self.volumes) - 1))
        j += j >= i
        return self.volumes[i], self.volumes[j]


def augment(moving, fixed, crop: Sequence[int], rng: np.random.Generator, max_degrees: float = 10.0):
    """The paper's augmentation, identical for both images: flip along y, rotation < max_degrees, crop.

    Takes and returns (B, 1, X, Y, Z) tensors.
    """
    import torch
    import torch.nn.functional as F

    if rng.random() < 0.5:
        moving, fixed = moving.flip(3), fixed.flip(3)
    if max_degrees > 0:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = math.radians(rng.uniform(-max_degrees, max_degrees))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        theta = torch.zeros(moving.shape[0], 3, 4, dtype=moving.dtype, device=moving.device)
        theta[:, :, :3] = torch.as_tensor(rotation, dtype=moving.dtype)
        grid = F.affine_grid(theta, list(moving.shape), align_corners=True)
        moving = F.grid_sample(moving, grid, align_corners=True)
        fixed = F.grid_sample(fixed, grid, align_corners=True)
    starts = [int(rng.integers(0, n - c + 1)) for n, c in zip(moving.shape[2:], crop)]
    window = (slice(None), slice(None), *(slice(s, s + c) for s, c in zip(starts, crop)))
    return moving[window].contiguous(), fixed[window].contiguous()


def train(backend_name: str, settings: TrainSettings) -> Path:
    """Train (or resume training) a learned backend; returns the model path."""
    import torch

    backend = get_backend(backend_name)
    if not isinstance(backend, LearnedBackend):
        raise AtlasregError(f"backend {backend_name!r} does not learn: nothing to train")
    inputs = [*settings.images, *settings.val_images, *settings.val_labels, *(settings.atlas or ())]
    check_output(settings.output, inputs, suffixes=(".pt",))
    device = pick_device(settings.device)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest 3-D convolutions
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)

    resumed = load_model_file(settings.resume) if settings.resume else None
    if resumed and resumed["backend"] != backend_name:
        raise AtlasregError(f"{settings.resume}: a {resumed['backend']} model, not {backend_name}")
    config = backend.config({**(resumed["config"] if resumed else {}), **settings.config})
    network = backend.build_network(config).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, settings.lr_step), gamma=settings.lr_gamma)
    start_epoch, step = 0, 0
    if resumed:
        network.load_state_dict(resumed["weights"])
        if "optimizer" in resumed:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
        start_epoch, step = int(resumed.get("epoch", 0)), int(resumed.get("step", 0))

    steps_per_epoch = math.ceil(len(settings.images) / settings.batch_size)  # one draw per image and epoch
    total_steps = settings.iterations or settings.epochs * steps_per_epoch
    if step >= total_steps:
        raise AtlasregError(f"nothing to train: {settings.resume} already has {step} steps (of {total_steps} asked); "
                            "raise --epochs or --iterations to continue")
    source = PairSource(settings, config)
    validation = _validation_pairs(settings, config)
    log_path = settings.log or settings.output.with_name(settings.output.name + ".log.jsonl")
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=f"training {backend_name}", unit="step", disable=not settings.progress)
    stop = False
    epoch = start_epoch
    with open(log_path, "a") as log:
        while not stop:
            network.train()
            order = rng.permutation(len(source))
            for first in range(0, len(order), settings.batch_size):
                draws = [source.sample(int(i), rng) for i in order[first : first + settings.batch_size]]
                moving = torch.from_numpy(np.stack([d[0] for d in draws]))[:, None].to(device)
                fixed = torch.from_numpy(np.stack([d[1] for d in draws]))[:, None].to(device)
                moving, fixed = augment(moving, fixed, config["crop"], rng)
                optimizer.zero_grad()
                _, terms = backend.loss_terms(network, moving, fixed, config, sample=True)
                loss = backend.total_loss(terms, config)
                loss.backward()
                optimizer.step()
                step += 1
                values = {name: float(value.detach()) for name, value in terms.items()}
                record = {"epoch": epoch, "step": step, "loss": float(loss.detach()), **values, "lr": optimizer.param_groups[0]["lr"],
                          "seconds": round(time.perf_counter() - started, 2), "pairs": len(draws)}
                log.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in {"loss": record["loss"], **values}.items()})
                out_of_time = settings.max_minutes and time.perf_counter() - started > 60 * settings.max_minutes
                if step >= total_steps or out_of_time:
                    stop = True
                    break
            scheduler.step()
            epoch += 1
            extra = {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "training": _settings_record(settings)}
            if validation:
                dice = validate(backend, network, config, validation, device, settings.val_protocol)
                log.write(json.dumps({"epoch": epoch, "step": step, "val_mean_dice": dice}) + "\n")
                bar.write(f"epoch {epoch}: validation mean Dice {dice:.4f}")
                extra["val_mean_dice"] = dice
            log.flush()
            save_model(settings.output, backend_name, config, network, extra)
            if not settings.iterations and epoch >= settings.epochs:
                stop = True
    bar.close()
    return settings.output


def _settings_record(settings: TrainSettings) -> dict:
    """The run's settings as plain values (stored in the model file for provenance)."""
    return {
        "images": [str(p) for p in settings.images],
        "atlas": [str(p) for p in settings.atlas] if settings.atlas else None,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "lr_step": settings.lr_step,
        "lr_gamma": settings.lr_gamma,
        "seed": settings.seed,
    }


@dataclass(frozen=True)
class ValidationCase:
    pair: AlignedPair
    target: Volume
    truth: Volume
    atlas_labels: Volume


def _validation_pairs(settings: TrainSettings, config: Mapping[str, Any]) -> list[ValidationCase]:
    if not settings.val_images:
        return []
    if settings.atlas is None:
        raise AtlasregError("validation needs --atlas (its labels are what gets carried to the validation images)")
    if len(settings.val_images) != len(settings.val_labels):
        raise AtlasregError(f"{len(settings.val_images)} validation images but {len(settings.val_labels)} label maps")
    cache = settings.cache_dir or settings.output.with_name(settings.output.name + ".cache")
    atlas_image, atlas_labels = Path(settings.atlas[0]), as_labels(settings.atlas[1])
    cases = []
    for image, labels in zip(settings.val_images, settings.val_labels):
        pair = aligned(atlas_image, Path(image), float(config["spacing"]), tuple(config["shape"]), cache)
        cases.append(ValidationCase(pair, as_image(image), as_labels(labels), atlas_labels))
    return cases


def validate(
    backend: LearnedBackend, network, config: Mapping[str, Any], cases: Sequence[ValidationCase], device: str, protocol: str
) -> float:
    """Mean Dice of atlas labels carried onto each validation image by the current network."""
    import torch

    network.eval()
    scores = []
    for case in cases:
        moving = torch.from_numpy(case.pair.moving)[None, None].to(device)
        fixed = torch.from_numpy(case.pair.fixed)[None, None].to(device)
        flow = backend.predict_flow(network, moving, fixed, config)
        transform = transform_from_flow(flow[0], case.pair, case.target)
        scores.append(evaluate(transform.warp_labels(case.atlas_labels), case.truth, protocol)["mean_dice"])
    network.train()
    return float(np.mean(scores))
