"""One training loop for every learned backend (``atlasreg train``).

Where pairs come from:

* ``synth`` label maps (no images at all): every map is affinely pre-aligned once to the first
  (through T1 images synthesized from them; the matrix is cached), then every pair is synthesized
  afresh from two random maps by ``atlasreg.synth_pairs`` (random deformations, random contrast,
  bias, blur, resolution, noise): a contrast-agnostic model, not tied to one atlas.
* images: with an atlas, atlas -> each subject (what segmentation needs); without, random pairs of
  subjects, all first affinely aligned to the first subject (matrices cached by file contents).
  Augmentation as in the paper, drawn per sample and identical for both images of a pair: flip
  along y, a rigid rotation < 10 degrees (built in millimetres, so a rotation on any grid), crop.

The schedule counts optimiser steps (cosine decay from ``lr`` to ``lr * lr_floor``), so the same
defaults fit 6 images or 600. Pair ``k`` of step ``s`` is drawn from a seed of (seed, s, k) alone:
under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU, NCCL on GPU) each
rank takes its share of the same global batch, so N processes follow the single-process run.
Every loss term of every step goes to a JSON-lines log; the model file (with the optimiser state,
for ``--resume``) is rewritten every ``save_every`` steps and at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .engine.grid import AlignedPair, align_pair, pick_device, working_grid
from .errors import AtlasregError
from .io import atomic_path, check_output, file_digest, glob_paths
from .logs import progress_bar
from .learned import LearnedBackend
from .metrics import evaluate
from .protocols import get_protocol
from .models import load_model_file, save_model
from .pipeline import as_image, as_labels
from .plugin_api import parse_assignments
from .registry import get_backend
from .volume import Volume


@dataclass
class TrainSettings:
    """Everything about a run that is not the model's own config."""

    output: Path
    images: Sequence[Path] = ()
    synth: Sequence[Path] = ()  # label maps: train on pairs synthesized from them instead of images
    atlas: tuple[Path, Path] | None = None
    steps: int = 2000  # optimiser steps: the length of the learning-rate schedule
    max_minutes: float = 0.0  # > 0: stop (and save) after this much wall-clock time
    batch_size: int = 2  # pairs per step, over all processes
    lr: float = 1e-3
    lr_floor: float = 0.01  # the cosine schedule ends at lr * lr_floor
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None  # continue this run: weights, optimiser, schedule and step
    init: Path | None = None  # fine-tune: start from this model's weights and config, fresh optimiser and schedule
    save_every: int = 100
    val_every: int = 250
    val_images: Sequence[Path] = ()
    val_labels: Sequence[Path] = ()
    val_protocol: str = "aseg"
    cache_dir: Path | None = None
    log: Path | None = None
    progress: bool = True
    prefetch: bool = True  # on the CPU: synthesize the next batch while the current step runs
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values that would train nothing, loop forever or reach torch as nonsense."""
        at_least = {"steps": 1, "batch_size": 1, "max_minutes": 0, "seed": 0, "save_every": 1, "val_every": 1}
        for name, lowest in at_least.items():
            value = getattr(self, name)
            if not math.isfinite(value) or value < lowest:
                raise AtlasregError(f"{name} must be at least {lowest} (got {value})")
        for name in ("lr", "lr_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AtlasregError(f"{name} must be a number > 0 (got {value})")
        get_protocol(self.val_protocol)


#: part of every cache key: bump when the affine stage (algorithm or default options) changes, so old matrices are not reused
AFFINE_STAGE_VERSION = 4  # 2: rigid stage before the affine one; 3: the torch affine stage (atlasreg.engine); 4: sampled MI, 8/4 mm


def _content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes: the cache follows the data, not its path (copies and moves still hit)."""
    return file_digest(path, "sha1")  # SHA-1 as the caches made so far are keyed


def _label_volume(path: Path, spacing: float) -> Volume:
    """A label map skull-stripped (labels >= 100 -> 0) and resampled to ``spacing`` mm."""
    from .spatial import resample_to_spacing
    from .synth import skull_strip

    return resample_to_spacing(skull_strip(as_labels(path)), spacing)


def cached_align_pair(
    moving_path: Path,
    fixed_path: Path,
    spacing: float,
    shape: tuple[int, int, int],
    cache_dir: Path,
    identity: bool = False,
    label_maps: bool = False,
) -> AlignedPair:
    """``align_pair`` of two files; the affine stage's matrix is read from / written to ``cache_dir``.

    ``label_maps=True``: the files are label maps; the affine stage runs on T1 images synthesized
    from them (seed 0) and the pair carries the moving labels. Only the matrix is cached (keyed by
    both files' contents): it is the slow part; resampling takes a fraction of a second.
    """
    matrix = np.eye(4) if identity else None
    if matrix is None:
        kind = f"labels{spacing}" if label_maps else "images"
        key = hashlib.sha1(f"{AFFINE_STAGE_VERSION}:{kind}:{_content_hash(moving_path)}:{_content_hash(fixed_path)}".encode()).hexdigest()[:20]
        cached = cache_dir / f"affine-{key}.json"
        if cached.exists():
            matrix = np.array(json.loads(cached.read_text())["matrix"], dtype=float)
    if label_maps:
        from .synth import synthesize

        moving_labels = _label_volume(moving_path, spacing)
        moving, fixed = synthesize(moving_labels), synthesize(_label_volume(fixed_path, spacing))
        pair = align_pair(moving, fixed, working_grid(fixed, spacing, shape), moving_labels=moving_labels, matrix=matrix)
    else:
        fixed = as_image(fixed_path)
        pair = align_pair(as_image(moving_path), fixed, working_grid(fixed, spacing, shape), matrix=matrix)
    if matrix is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:  # each rank of a torchrun may write it: one temporary each
            tmp.write_text(json.dumps({"moving": str(moving_path), "fixed": str(fixed_path), "matrix": pair.matrix.tolist()}))
    return pair


class ImagePairs:
    """Training pairs from image files on the working grid: atlas -> subject, or subject -> subject."""

    def __init__(self, settings: TrainSettings, config: Mapping[str, Any], cache: Path) -> None:
        spacing, shape = float(config["spacing"]), tuple(config["shape"])
        images = [Path(p) for p in settings.images]
        if len(images) < (1 if settings.atlas else 2):
            raise AtlasregError("training needs at least one image with --atlas, or two without")
        self.crop = tuple(config["crop"])
        self.atlas_mode = settings.atlas is not None
        pending = progress_bar(images, desc="affine pre-alignment (cached)", unit="image", enabled=settings.progress)
        if self.atlas_mode:
            self.pairs = [cached_align_pair(Path(settings.atlas[0]), image, spacing, shape, cache) for image in pending]
        else:
            reference = images[0]
            self.volumes = [cached_align_pair(image, reference, spacing, shape, cache, identity=image == reference).moving for image in pending]

    def batch(self, seeds: Sequence[int], device: str):
        """A ``TrainingPair`` of the pairs of ``seeds`` on ``device`` (images only)."""
        from .recipe import TrainingPair

        return TrainingPair.stack([self.pair(seed) for seed in seeds], device)

    def pair(self, seed: int):
        """(moving, fixed), each (1, X, Y, Z) on the crop, augmented alike; no labels."""
        import torch

        from .recipe import TrainingPair

        rng = np.random.default_rng(seed)
        if self.atlas_mode:
            chosen = self.pairs[int(rng.integers(len(self.pairs)))]
            moving, fixed = chosen.moving, chosen.fixed
        else:
            i, j = rng.choice(len(self.volumes), size=2, replace=False)
            moving, fixed = self.volumes[i], self.volumes[j]
        both = torch.from_numpy(np.stack([moving, fixed]))[:, None]
        both = augment(both, self.crop, rng)
        return TrainingPair(both[0], both[1])


def augment(images, crop: Sequence[int], rng: np.random.Generator, max_degrees: float = 10.0):
    """The paper's augmentation, one draw applied to every image of ``images`` (N, 1, X, Y, Z): flip
    along y, a rotation < ``max_degrees`` about a random axis through the grid centre, a random crop.

    The rotation acts on voxel coordinates of the isotropic working grid, so it is rigid whatever
    the grid's shape (in grid_sample's normalised coordinates it would be a shear on a non-cubic grid)."""
    import torch

    from .flow import sample_at

    if rng.random() < 0.5:
        images = images.flip(3)
    shape = images.shape[2:]
    if max_degrees > 0:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = math.radians(rng.uniform(-max_degrees, max_degrees))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        in_voxels = torch.as_tensor(rotation, dtype=images.dtype)
        axes = [torch.arange(n, dtype=images.dtype) for n in shape]
        centre = (torch.tensor(shape, dtype=images.dtype) - 1) / 2
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) - centre
        source = points @ in_voxels.T + centre  # voxel read for each output voxel
        images = sample_at(images, source[None], padding="zeros")
    starts = [int(rng.integers(0, n - c + 1)) for n, c in zip(shape, crop)]
    window = (slice(None), slice(None), *(slice(s, s + c) for s, c in zip(starts, crop)))
    return images[window].contiguous()


class SynthSource:
    """Training pairs synthesized on the training device from label maps pre-aligned to the first one."""

    def __init__(self, settings: TrainSettings, config: Mapping[str, Any], cache: Path, view: bool, device: str) -> None:
        from .synth_pairs import SynthPairs

        self.view = view
        spacing, shape = float(config["spacing"]), tuple(config["shape"])
        maps = [Path(p) for p in settings.synth]
        pending = progress_bar(maps, desc="affine pre-alignment of the label maps (cached)", unit="map", enabled=settings.progress)
        self.pairs = SynthPairs([self._on_grid(m, maps[0], spacing, shape, cache) for m in pending], config["crop"], device=device)

    @staticmethod
    def _on_grid(labels: Path, reference: Path, spacing: float, shape: tuple[int, int, int], cache: Path) -> np.ndarray:
        """``labels`` aligned to ``reference``'s working grid; the array itself is cached (loading and
        resampling 1 mm maps costs more than the training steps of a short run)."""
        key = hashlib.sha1(f"{AFFINE_STAGE_VERSION}:{spacing}:{shape}:{_content_hash(labels)}:{_content_hash(reference)}".encode()).hexdigest()[:20]
        cached = cache / f"labels-{key}.npy"
        if cached.exists():
            return np.load(cached)
        array = cached_align_pair(labels, reference, spacing, shape, cache, identity=labels == reference, label_maps=True).moving_labels
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            np.save(tmp, array.astype(np.int16))
        return array

    def batch(self, seeds: Sequence[int], device: str):
        """A ``TrainingPair`` of the pairs of ``seeds``: images, labels, and the fixed labels' second
        rendering if asked, synthesized on the device given at construction (``device``)."""
        return self.pairs.batch(seeds, view=self.view)


def _cosine(step: int, steps: int, floor: float) -> float:
    """Learning-rate factor at ``step`` of a ``steps``-long cosine schedule ending at ``floor``."""
    progress = min(step / max(steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under torchrun (process group initialised), else (0, 1, device)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        import torch

        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def train_from_options(
    backend_name: str, output: str | os.PathLike, *, synth: Sequence[str] = (), images: Sequence[str] = (),
    atlas: Sequence[str] | None = None, val_images: Sequence[str] = (), val_labels: Sequence[str] = (),
    spacing: float | None = None, shape: str | None = None, crop: str | None = None, losses: str | None = None,
    weights: Sequence[str] = (), config: Sequence[str] = (), resume: str | None = None, init: str | None = None,
    log: str | None = None, cache_dir: str | None = None, **settings: Any,
) -> Path:
    """``atlasreg train``: :func:`train` from its command-line values, texts as given there (globs
    for the files, ``X,Y,Z`` for ``shape``/``crop``, ``a,b`` for ``losses``, ``TERM=VALUE`` for
    ``weights``, ``KEY=VALUE`` with JSON values for ``config``); ``settings``: the other fields
    of :class:`TrainSettings`. ``weights`` update the backend's default weights."""
    model_config = _parse_config(config)
    if spacing is not None:
        model_config["spacing"] = spacing
    for key, text in (("shape", shape), ("crop", crop)):
        if text:
            model_config[key] = _ints(text, f"--{key}")
    if losses:
        model_config["losses"] = [name.strip() for name in losses.split(",") if name.strip()]
    if weights:
        known = get_backend(backend_name)
        model_config["weights"] = {**getattr(known, "default_config", {}).get("weights", {}), **_loss_weights(weights)}
    files = {name: glob_paths(patterns, f"--{name.replace('_', '-')}") if patterns else []
             for name, patterns in (("images", images), ("synth", synth), ("val_images", val_images), ("val_labels", val_labels))}
    optional = {name: Path(value) if value else None for name, value in (("resume", resume), ("init", init), ("log", log),
                                                                         ("cache_dir", cache_dir))}
    return train(backend_name, TrainSettings(output=Path(output), atlas=(Path(atlas[0]), Path(atlas[1])) if atlas else None,
                                             config=model_config, **files, **optional, **settings))


def _parse_config(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with JSON values where they parse (numbers, lists, objects), text otherwise."""
    config = {}
    for key, value in parse_assignments(pairs, "config").items():
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def _loss_weights(pairs: Sequence[str]) -> dict[str, float]:
    """--weight TERM=VALUE pairs as numbers; a value that is not a finite number >= 0 is refused."""
    weights = {}
    for term, text in parse_assignments(pairs, "--weight").items():
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise AtlasregError(f"--weight {term}={text!r}: expected a finite number >= 0")
        weights[term] = value
    return weights


def _ints(text: str, flag: str) -> list[int]:
    """``X,Y,Z`` as integers (their range is the config's to check)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise AtlasregError(f"{flag} {text!r}: expected whole numbers X,Y,Z") from None


def train(backend_name: str, settings: TrainSettings) -> Path:
    """Train (or resume training) a learned backend; returns the model path.

    A run that fails (or is interrupted) before any model file exists removes the pre-alignment
    cache (``MODEL.pt.cache/``) and loss log it created: with no model to resume, they are litter.
    """
    cache = settings.cache_dir or settings.output.with_name(settings.output.name + ".cache")
    log_path = settings.log or settings.output.with_name(settings.output.name + ".log.jsonl")
    made = [path for path in (cache, log_path) if not path.exists()]
    try:
        return _train(backend_name, settings, cache, log_path)
    except BaseException:
        if not settings.output.exists() and int(os.environ.get("RANK", "0")) == 0:
            for path in made:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _train(backend_name: str, settings: TrainSettings, cache: Path, log_path: Path) -> Path:
    """The run itself: :func:`train` without the clean-up of a failure."""
    import torch
    import torch.distributed as dist

    backend = get_backend(backend_name)
    if not isinstance(backend, LearnedBackend):
        raise AtlasregError(f"backend {backend_name!r} does not learn: nothing to train")
    inputs = [*settings.images, *settings.synth, *settings.val_images, *settings.val_labels, *(settings.atlas or ()),
              *([settings.init] if settings.init else [])]
    check_output(settings.output, inputs, suffixes=(".pt",))
    if bool(settings.images) == bool(settings.synth):
        raise AtlasregError("train on either images or --synth label maps (exactly one of them)")
    if settings.synth and settings.atlas and not settings.val_images:
        raise AtlasregError("--synth trains any atlas to any target: it takes --atlas only for validation (with --val-images)")
    rank, world, device = _distributed(pick_device(settings.device))
    if settings.batch_size % world:
        raise AtlasregError(f"batch size {settings.batch_size} does not split over {world} processes")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest 3-D convolutions
    torch.manual_seed(settings.seed + rank)  # the networks' own draws (posterior samples, contrast locations)

    if settings.resume and settings.init:
        raise AtlasregError("--resume continues a run, --init starts a new one from a model's weights: give one of them")
    start_from = settings.resume or settings.init
    resumed = load_model_file(start_from) if start_from else None
    if resumed and resumed["backend"] != backend_name:
        raise AtlasregError(f"{start_from}: a {resumed['backend']} model, not {backend_name}")
    config = backend.config({**(resumed["config"] if resumed else {}), **settings.config})
    _check_recipe(backend, config, bool(settings.synth))
    torch.manual_seed(settings.seed)  # the same initial weights on every rank
    network = backend.build_network(config).to(device)
    torch.manual_seed(settings.seed + rank)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, settings.steps, settings.lr_floor))
    step = 0
    if resumed:
        backend.load_weights(network, config, resumed["weights"], start_from)
    if resumed and settings.resume:
        if "optimizer" in resumed:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
        step = int(resumed.get("step", 0))
    model = network
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(network, find_unused_parameters=True)

    if step >= settings.steps:
        raise AtlasregError(f"nothing to train: {settings.resume} already has {step} steps (of {settings.steps} asked); "
                            "raise --steps to continue")
    if settings.synth:
        source = SynthSource(settings, config, cache, backend.needs_view(config), device)
    else:
        source = ImagePairs(settings, config, cache)
    validation = _validation_pairs(settings, config, cache) if rank == 0 else []
    started = time.perf_counter()
    bar = progress_bar(total=settings.steps, initial=step, desc=f"training {backend_name}", unit="step",
                       enabled=settings.progress and rank == 0)
    batches = _batches(source, settings, rank, world, device, step)
    with open(log_path, "a") if rank == 0 else open(os.devnull, "w") as log:
        while step < settings.steps:
            network.train()
            waited = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - waited
            optimizer.zero_grad()
            _, terms = backend.loss_terms(model, batch, config, sample=True)
            loss = backend.total_loss(terms, config)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            values = {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}
            if world > 1:
                stacked = torch.stack(list(values.values()))
                dist.all_reduce(stacked)
                values = dict(zip(values, stacked / world))
            record = {"step": step, **{k: float(v) for k, v in values.items()}, "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - started, 2), "pairs": settings.batch_size,
                      "data_seconds": round(waited, 4)}
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in values})
            out_of_time = bool(settings.max_minutes) and time.perf_counter() - started > 60 * settings.max_minutes
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag)
                out_of_time = bool(flag.item())
            last = step >= settings.steps or out_of_time
            if rank == 0 and validation and (step % settings.val_every == 0 or last):
                dice = validate(backend, network, config, validation, device, settings.val_protocol)
                log.write(json.dumps({"step": step, "val_mean_dice": dice}) + "\n")
                bar.write(f"step {step}: validation mean Dice {dice:.4f}")
            if rank == 0 and (step % settings.save_every == 0 or last):
                log.flush()
                extra = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "training": _settings_record(settings, world)}
                save_model(settings.output, backend_name, config, network, extra)
            if out_of_time:
                break
    batches.close()
    bar.close()
    return settings.output


def _batches(source, settings: TrainSettings, rank: int, world: int, device: str, step: int) -> Iterator:
    """This rank's share of the batch of every step from ``step`` to the last. On the CPU (with
    ``settings.prefetch``) the next batch is synthesized in a background thread while the current
    step runs: torch releases the GIL, so the two share the cores instead of taking turns. A batch
    depends on its pairs' seeds only, so prefetching changes no value."""
    from concurrent.futures import ThreadPoolExecutor

    from .synth_pairs import pair_seed

    def make(s: int):
        return source.batch([pair_seed(settings.seed, s, k) for k in range(rank, settings.batch_size, world)], device)

    if not (settings.prefetch and device == "cpu"):
        for s in range(step, settings.steps):
            yield make(s)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="synthesis") as pool:
        pending = pool.submit(make, step)
        for s in range(step, settings.steps):
            batch = pending.result()
            if s + 1 < settings.steps:
                pending = pool.submit(make, s + 1)
            yield batch


def _check_recipe(backend: LearnedBackend, config: Mapping[str, Any], synth: bool) -> None:
    """Refuse a config whose data term the pairs cannot feed: --synth pairs train on label overlap
    (``dice``; their images have independent contrasts), image pairs on the backend's image term."""
    term = "dice" if synth else backend.image_term
    if term not in config["losses"]:
        source = "--synth pairs train on label overlap" if synth else "image pairs train on image similarity"
        wanted = ",".join([term, *(n for n in config["losses"] if n not in ("dice", backend.image_term))])
        raise AtlasregError(f"{source}: {term!r} is not among the losses ({', '.join(config['losses'])}); give --losses {wanted}")
    if not synth and backend.needs_view(config):
        raise AtlasregError("this contrastive term needs two renderings of one label map: train it with --synth, "
                            "or choose another (-C contrast=dense, global or none)")


def _settings_record(settings: TrainSettings, world: int) -> dict:
    """The run's settings as plain values (stored in the model file for provenance)."""
    return {
        "images": [str(p) for p in settings.images],
        "synth": [str(p) for p in settings.synth],
        "atlas": [str(p) for p in settings.atlas] if settings.atlas else None,
        "init": str(settings.init) if settings.init else None,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "lr_floor": settings.lr_floor,
        "seed": settings.seed,
        "processes": world,
    }


@dataclass(frozen=True)
class ValidationCase:
    pair: AlignedPair
    target: Volume
    truth: Volume
    atlas_labels: Volume


def _validation_pairs(settings: TrainSettings, config: Mapping[str, Any], cache: Path) -> list[ValidationCase]:
    if not settings.val_images:
        return []
    if settings.atlas is None:
        raise AtlasregError("validation needs --atlas (its labels are what gets carried to the validation images)")
    if len(settings.val_images) != len(settings.val_labels):
        raise AtlasregError(f"{len(settings.val_images)} validation images but {len(settings.val_labels)} label maps")
    atlas_image, atlas_labels = Path(settings.atlas[0]), as_labels(settings.atlas[1])
    cases = []
    for image, labels in zip(settings.val_images, settings.val_labels):
        pair = cached_align_pair(atlas_image, Path(image), float(config["spacing"]), tuple(config["shape"]), cache)
        cases.append(ValidationCase(pair, as_image(image), as_labels(labels), atlas_labels))
    return cases


def validate(
    backend: LearnedBackend, network, config: Mapping[str, Any], cases: Sequence[ValidationCase], device: str, protocol: str
) -> float:
    """Mean Dice of atlas labels carried onto each validation image by the current network."""
    network.eval()
    scores = []
    for case in cases:
        transform = backend.predict(network, config, case.pair, case.target, device)
        scores.append(evaluate(transform.warp_labels(case.atlas_labels), case.truth, protocol)["mean_dice"])
    network.train()
    return float(np.mean(scores))
