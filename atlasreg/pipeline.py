"""The verbs: register a moving image to a fixed one, segment a target from labelled atlases."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Tuple, Union

from tqdm import tqdm

import nibabel as nib
import numpy as np

from .errors import AtlasregError
from .io import atomic_path, from_array, load, save
from .lut import LabelInfo
from .registry import get_backend, get_fusion
from .transform import Transform
from .volume import Volume

#: a Volume, a NIfTI path, a nibabel image, or an (array, affine) pair
ImageLike = Union[Volume, str, os.PathLike, nib.spatialimages.SpatialImage, Tuple[np.ndarray, np.ndarray]]
Atlas = Tuple[ImageLike, ImageLike]


def _as_volume(value: ImageLike, labels: bool, what: str) -> Volume:
    if isinstance(value, Volume):
        return value
    if isinstance(value, nib.spatialimages.SpatialImage):
        return from_array(np.asanyarray(value.dataobj), value.affine, labels, what)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
        return from_array(value[0], np.asarray(value[1]), labels, what)
    if isinstance(value, (str, os.PathLike)):
        return load(value, labels=labels)
    raise AtlasregError(f"{what}: expected a path, a Volume, a nibabel image or (array, affine), got {type(value).__name__}")


def as_image(value: ImageLike, what: str = "image") -> Volume:
    """An intensity-image Volume from any ``ImageLike``."""
    volume = _as_volume(value, False, what)
    if volume.is_labels:
        raise AtlasregError(f"{what}: expected an intensity image, got a label map")
    if not volume.array.any():
        raise AtlasregError(f"{what}: image is empty (all zero)")
    return volume


def as_labels(value: ImageLike, what: str = "label map") -> Volume:
    """A label-map Volume from any ``ImageLike``."""
    volume = _as_volume(value, True, what)
    if not volume.is_labels:
        raise AtlasregError(f"{what}: expected a label map, got an intensity image")
    if not volume.array.any():
        raise AtlasregError(f"{what}: label map is empty (no non-zero label)")
    return volume


def register(
    moving: ImageLike, fixed: ImageLike, backend: str = "ants", options: Mapping[str, Any] | None = None
) -> Transform:
    """Register ``moving`` to ``fixed``; the Transform lives on ``fixed``'s grid and pulls ``moving`` onto it.

    ``options``: the backend's options (``atlasreg options BACKEND``), as ``segment``'s ``backend_options``.
    """
    method = get_backend(backend)
    resolved = method.resolve_options(options or {})
    fixed_v, moving_v = as_image(fixed, "fixed image"), as_image(moving, "moving image")
    transform = method.register(moving_v, fixed_v, **resolved)
    if transform.shape != fixed_v.shape:
        raise AtlasregError(f"backend {backend!r} returned a transform on the wrong grid")
    return transform


def load_atlases(atlases: Iterable[Atlas]) -> list[tuple[Volume, Volume]]:
    """Each (image, labels) pair loaded and checked to share one grid."""
    loaded = []
    for index, (image, labels) in enumerate(atlases, start=1):
        image_v = as_image(image, f"atlas {index} image")
        labels_v = as_labels(labels, f"atlas {index} labels")
        if not image_v.same_grid(labels_v):
            raise AtlasregError(f"atlas {index}: image and label map are on different grids (shape or affine differ)")
        loaded.append((image_v, labels_v))
    if not loaded:
        raise AtlasregError("no atlas given: pass at least one (image, labels) pair")
    return loaded


def segment(
    target: ImageLike,
    atlases: Sequence[Atlas] | None = None,
    backend: str = "ants",
    fusion: str = "majority",
    backend_options: Mapping[str, Any] | None = None,
    fusion_options: Mapping[str, Any] | None = None,
    label_interp: str = "nearest",
    progress: bool = False,
    builtin_atlas: str | None = None,
) -> Volume:
    """Label ``target`` by registering each atlas to it and fusing the warped atlas labels.

    ``atlases`` None means the built-in atlas ``builtin_atlas`` (default: the MNI152 template with
    Desikan-Killiany labels, built from installed packages' data). Returns an integer label map in
    the target's grid and affine. One atlas needs no fusion.
    """
    if atlases is not None and builtin_atlas:
        raise AtlasregError("give atlases or a built-in atlas name, not both")
    method = get_backend(backend)
    resolved = method.resolve_options(backend_options or {})
    fuser = get_fusion(fusion)  # checked with one atlas too: a typo should not pass silently
    fusion_resolved = fuser.resolve_options(fusion_options or {})
    if atlases is None:
        from .atlases import DEFAULT_ATLAS, load_atlas

        image, labels, _ = load_atlas(builtin_atlas or DEFAULT_ATLAS)
        atlases = [(image, labels)]
    target_v = as_image(target, "target image")
    pairs = load_atlases(atlases)
    several = len(pairs) > 1
    warped_images, warped_labels = [], []
    for image, labels in tqdm(pairs, desc=f"registering atlases ({backend})", unit="atlas", disable=not progress):
        transform = method.register(image, target_v, **resolved)
        warped_labels.append(transform.warp_labels(labels, label_interp))
        if several:
            warped_images.append(transform.warp(image))
    if not several:
        return warped_labels[0]
    return fuser.fuse(target_v, warped_images, warped_labels, **fusion_resolved)


@dataclass(frozen=True)
class SubjectJob:
    """One target of a study and where its outputs go. ``record`` (a JSON sidecar) is written last:
    its presence means the subject is finished, so a rerun skips it."""

    id: str
    target: Path
    labels: Path
    volumes: Path
    figure: Path
    record: Path


@dataclass(frozen=True)
class SegmentSettings:
    """What every subject of a study shares: the method and the names of the atlas labels."""

    backend: str
    fusion: str = "majority"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    fusion_options: Mapping[str, Any] = field(default_factory=dict)
    label_interp: str = "nearest"
    label_names: Mapping[int, LabelInfo] | None = None
    qc: bool = True


def plain_jobs(targets: Sequence[ImageLike], out_dir: str | os.PathLike) -> list[SubjectJob]:
    """Outputs named after the inputs: ``OUT/<name>_seg.nii.gz``, ``_volumes.tsv``, ``_qc.png``, ``_seg.json``."""
    out = Path(out_dir)
    jobs, seen = [], {}
    for target in targets:
        path = Path(target)
        stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        if stem in seen:
            raise AtlasregError(f"{seen[stem]} and {path} have the same name: their outputs would collide")
        seen[stem] = path
        jobs.append(SubjectJob(stem, path, out / f"{stem}_seg.nii.gz", out / f"{stem}_volumes.tsv", out / f"{stem}_qc.png",
                               out / f"{stem}_seg.json"))
    return jobs


def segment_many(
    targets: Sequence[ImageLike],
    atlases: Sequence[Atlas] | None = None,
    out_dir: str | os.PathLike = "atlasreg-out",
    backend: str = "ants",
    fusion: str = "majority",
    backend_options: Mapping[str, Any] | None = None,
    fusion_options: Mapping[str, Any] | None = None,
    label_interp: str = "nearest",
    builtin_atlas: str | None = None,
    label_names: Mapping[int, LabelInfo] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    client: Any = None,
    qc: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Segment every target into ``out_dir``: label map, volumes table, QC figure and a record per
    target, and ``index.html`` for the run. Returns one record (dict) per target, in input order.

    Finished targets are skipped (resume); a target that fails is recorded with its error and the
    others go on. ``jobs`` processes (``threads`` each) or a Dask ``client`` run targets in parallel.
    """
    out = Path(out_dir)
    if not out.is_dir():
        if not out.parent.is_dir():
            raise AtlasregError(f"{out.parent}: output folder does not exist")
        out.mkdir()
    study_jobs = plain_jobs(targets, out)
    pairs, names = study_atlases(atlases, builtin_atlas)
    method = get_backend(backend)
    settings = SegmentSettings(backend, fusion, method.resolve_options(backend_options or {}), dict(fusion_options or {}),
                               label_interp, label_names or names, qc)
    records = segment_subjects(study_jobs, pairs, settings, jobs=jobs, threads=threads, client=client, progress=progress)
    from .qc import write_index

    write_index(out / "index.html", records, title=f"atlasreg: {len(records)} targets, {method_label(backend, settings.backend_options)}")
    return records


def study_atlases(atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> tuple[list[tuple[Volume, Volume]], dict[int, LabelInfo] | None]:
    """The atlases loaded (the built-in one built) once for a whole study, and their label names if known."""
    if atlases is not None and builtin_atlas:
        raise AtlasregError("give atlases or a built-in atlas name, not both")
    if atlases is not None:
        return load_atlases(atlases), None
    from .atlases import DEFAULT_ATLAS, label_infos, load_atlas

    image, labels, _ = load_atlas(builtin_atlas or DEFAULT_ATLAS)
    return [(image, labels)], label_infos(builtin_atlas or DEFAULT_ATLAS)


def segment_subjects(study_jobs: Sequence[SubjectJob], atlases: list[tuple[Volume, Volume]], settings: SegmentSettings,
                     jobs: int = 1, threads: int | None = None, client: Any = None, progress: bool = False) -> list[dict[str, Any]]:
    """Run :func:`segment_subject` on every job not finished before; records in job order."""
    from .batch import run_tasks

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in study_jobs:
        previous = _finished_record(job)
        if previous is not None:
            records[job.id] = {**previous, **_job_paths(job), "status": "done before"}
        else:
            todo.append(job)
    for outcome in run_tasks(segment_subject, todo, (atlases, settings), jobs=jobs, threads=threads, client=client,
                             desc=f"segmenting ({settings.backend})", progress=progress):
        job = outcome.task
        records[job.id] = outcome.result if outcome.ok else {**_job_paths(job), "status": "failed", "error": outcome.error,
                                                             "backend": method_label(settings.backend, settings.backend_options)}
        if not outcome.ok and progress:
            tqdm.write(f"{job.id}: failed: {outcome.error}")
    return [records[job.id] for job in study_jobs]


def method_label(backend: str, options: Mapping[str, Any]) -> str:
    """``ants preset=fast``: the backend and those of its options that differ from the defaults."""
    declared = get_backend(backend).options
    changed = []
    for key, value in options.items():
        if key in declared and value != declared[key].default:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else Path(value).name if key == "model" else value
            changed.append(f"{key}={shown}")
    return " ".join([backend, *changed])


def _job_paths(job: SubjectJob) -> dict[str, Any]:
    return {"id": job.id, "target": str(job.target), "labels": str(job.labels), "volumes": str(job.volumes),
            "figure": str(job.figure), "record": str(job.record)}


def _finished_record(job: SubjectJob) -> dict[str, Any] | None:
    if not (job.record.is_file() and job.labels.is_file()):
        return None
    try:
        record = json.loads(job.record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("status") == "ok" else None


def segment_subject(job: SubjectJob, atlases: list[tuple[Volume, Volume]], settings: SegmentSettings) -> dict[str, Any]:
    """Segment one target with preloaded atlases; write its label map, volumes, QC figure and record."""
    from .volumes import label_volumes, write_volumes

    start = time.perf_counter()
    target = as_image(job.target, f"target {job.id}")
    labels = segment(target, atlases, settings.backend, settings.fusion, settings.backend_options,
                     settings.fusion_options, settings.label_interp)
    seconds = time.perf_counter() - start
    for path in (job.labels, job.volumes, job.figure, job.record):
        path.parent.mkdir(parents=True, exist_ok=True)
    save(labels, job.labels)
    rows = label_volumes(labels, settings.label_names)
    write_volumes(rows, job.volumes)
    if settings.qc:
        from .qc import subject_figure

        subject_figure(job.figure, target, labels, title=f"{job.id}: {method_label(settings.backend, settings.backend_options)}",
                       names=settings.label_names)
    record = {**_job_paths(job), "backend": method_label(settings.backend, settings.backend_options), "status": "ok", "error": "", "seconds": round(seconds, 2),
              "peak_rss_mb": round(_peak_rss_mb(), 1), "labels_found": len(rows),
              "total_mm3": round(sum(r["volume_mm3"] for r in rows), 3)}
    with atomic_path(job.record) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (the worker's, in a parallel run) so far, in MiB."""
    import resource  # POSIX only; atlasreg runs on Linux and macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
