"""The verbs: register a moving image to a fixed one, segment a target from labelled atlases."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Tuple

import numpy as np

from ._version import __version__
from .errors import AtlasregError
from .io import (NIFTI_SUFFIXES, ImageLike, as_image, as_labels, as_target, as_volume, atomic_path, check_file_name, check_output,
                 check_outputs, expand_targets, glob_matches, is_pattern_or_folder, save, write_text)
from .logs import progress_bar, step_progress
from .lut import LabelInfo, label_table, names_beside, tsv_beside, write_dseg_tsv
from .registry import DEFAULT_BACKEND, DEFAULT_FUSION, get_backend, get_fusion
from .transform import Transform
from .volume import Volume

Atlas = Tuple[ImageLike, ImageLike]

log = logging.getLogger(__name__)


def register(
    moving: ImageLike, fixed: ImageLike, backend: str = DEFAULT_BACKEND, options: Mapping[str, Any] | None = None, progress: bool = False
) -> Transform:
    """Register ``moving`` to ``fixed``; the Transform lives on ``fixed``'s grid and pulls ``moving`` onto it.

    ``options``: the backend's options (``atlasreg options BACKEND``), as ``segment``'s ``backend_options``.
    ``progress``: bars of the optimisation steps on a terminal (backends optimised in torch; see :mod:`atlasreg.logs`).
    """
    method = get_backend(backend)
    resolved = method.resolve_options(options or {})
    fixed_v, moving_v = as_target(fixed, "fixed image"), as_image(moving, "moving image")
    start = time.perf_counter()
    with step_progress(progress):
        transform = method.register(moving_v, fixed_v, **resolved)
    log.info("registered with %s in %.1f s", backend, time.perf_counter() - start)
    if transform.shape != fixed_v.shape:
        raise AtlasregError(f"backend {backend!r} returned a transform on the wrong grid")
    return transform


def register_file(moving: str | os.PathLike, fixed: str | os.PathLike, output: str | os.PathLike,
                  transform_out: str | os.PathLike | None = None, backend: str = DEFAULT_BACKEND,
                  backend_options: Mapping[str, Any] | None = None, inverse_out: str | os.PathLike | None = None,
                  progress: bool = False) -> list[Path]:
    """``atlasreg register``: ``moving`` resampled onto ``fixed``'s grid written to ``output`` (and the
    transform to ``transform_out`` as a NIfTI displacement field on ``fixed``'s grid; its inverse to
    ``inverse_out``, on ``moving``'s grid: it pulls a ``fixed``-space image back onto ``moving``); the
    files written. Outputs are checked before any work (none may overwrite an input or another) and
    written only once everything is computed. How the inverse was found is logged: a warning where
    it is numerical (the backend kept no velocity field to negate)."""
    out = check_output(output, inputs=(moving, fixed))
    field_out = check_output(transform_out, inputs=(moving, fixed, out)) if transform_out else None
    inverse_path = check_output(inverse_out, inputs=[moving, fixed, out, *([field_out] if field_out else [])]) if inverse_out else None
    moving_v = as_image(moving, "moving image")
    transform = register(moving_v, fixed, backend=backend, options=backend_options, progress=progress)
    warped = transform.warp(moving_v)
    inverse = transform.inverse(moving_v) if inverse_path else None
    if inverse is not None:
        report_inversion(inverse, f"{backend} transform")
    written = []
    for path, write in ((field_out, transform.save), (inverse_path, inverse.save if inverse else None)):
        if path:
            written.append(write(path))
    save(warped, out)
    return [out, *written]


def report_inversion(inverse: Transform, what: str) -> None:
    """Log how an inverse was found: a warning where it is numerical (not exact), else an info line."""
    if inverse.inversion.startswith("numerical"):
        log.warning("%s inverted numerically (no exact inverse): %s", what, inverse.inversion.removeprefix("numerical: "))
    else:
        log.info("%s inverted exactly: %s", what, inverse.inversion.removeprefix("exact: "))


def transform_on(transform: Transform | str | os.PathLike, reference: ImageLike | None = None, inverse: bool = False) -> Transform:
    """A transform ready to pull volumes onto ``reference``'s grid: a Transform or a file (a NIfTI
    displacement field as :meth:`Transform.save`, ANTs or SimpleITK write it, or an ITK affine
    ``.mat`` / ``.txt`` / ``.tfm``), evaluated on ``reference``'s points, or inverted onto them
    (``inverse``: ``reference`` is then a grid of the transform's moving space). Without
    ``reference`` a forward field stays on its own grid. ``.inversion`` says how an inverse was found."""
    grid = None if reference is None else as_volume(reference, False, "reference image")
    if not isinstance(transform, Transform):
        transform = Transform.load(transform, grid)
    if inverse:
        if grid is None:
            raise AtlasregError("an inverse needs a reference image: a grid of the space the transform maps into")
        return transform.inverse(grid)
    return transform if grid is None else transform.on_grid(grid)


def apply(
    transform: Transform | str | os.PathLike,
    image: ImageLike,
    reference: ImageLike | None = None,
    labels: bool = False,
    inverse: bool = False,
    label_interp: str = "nearest",
) -> Volume:
    """``image`` (a label map with ``labels``) resampled through ``transform`` onto ``reference``'s
    grid, as antsApplyTransforms does; ``inverse`` applies the transform's inverse (see :func:`transform_on`)."""
    volume = as_labels(image, "label map") if labels else as_image(image, "image")
    ready = transform_on(transform, reference, inverse)
    return ready.warp_labels(volume, label_interp) if labels else ready.warp(volume)


def apply_file(transform: str | os.PathLike, image: str | os.PathLike, reference: str | os.PathLike, output: str | os.PathLike,
               labels: bool = False, inverse: bool = False, label_interp: str = "nearest") -> Path:
    """``atlasreg apply``: ``image`` (a label map with ``labels``) pulled through the saved ``transform``
    (or its inverse) onto ``reference``'s grid, written to ``output``. Refused in one line, with
    nothing written: an output that would overwrite an input, a reference that the transform's field
    does not reach, and a result with nothing of ``image`` in it (the wrong reference or transform)."""
    out = check_output(output, inputs=(transform, image, reference))
    volume = as_labels(image, "label map") if labels else as_image(image, "image")
    grid = as_volume(reference, False, "reference image")
    loaded = Transform.load(transform, grid)
    if not inverse and loaded.field is not None and not _overlap(loaded, grid):
        raise AtlasregError(f"{reference}: the reference image lies outside the grid of {transform}'s displacement field: "
                            "give the reference the transform was made on (its fixed image), or --inverse")
    ready = transform_on(loaded, grid, inverse)
    result = ready.warp_labels(volume, label_interp) if labels else ready.warp(volume)
    if not result.array.any():
        raise AtlasregError(f"nothing of {image} lands on {reference}'s grid through {transform}"
                            f"{' inverted' if inverse else ''}: a transform made for other images, or --inverse missing or wrong")
    save(result, out)
    if inverse:  # once the output is there: a refusal stays one line
        report_inversion(ready, str(transform))
    return out


def _overlap(transform: Transform, grid: Volume) -> bool:
    """Whether ``grid`` and ``transform``'s field grid share any part of space (world bounding boxes of their voxels)."""
    def box(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
        corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)])
        world = corners @ affine[:3, :3].T + affine[:3, 3]
        return np.stack([world.min(0), world.max(0)])

    ours, theirs = box(transform.shape, transform.grid_affine), box(grid.shape, grid.affine)
    return bool(np.all(ours[0] < theirs[1]) and np.all(theirs[0] < ours[1]))


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
    backend: str = DEFAULT_BACKEND,
    fusion: str = DEFAULT_FUSION,
    backend_options: Mapping[str, Any] | None = None,
    fusion_options: Mapping[str, Any] | None = None,
    label_interp: str = "nearest",
    progress: bool = False,
    builtin_atlas: str | None = None,
    transforms: list[Transform] | None = None,
) -> Volume:
    """Label ``target`` by registering each atlas to it and fusing the warped atlas labels.

    ``atlases`` None means the built-in atlas ``builtin_atlas`` (default: the MNI152 template with
    Desikan-Killiany labels, built from installed packages' data). Returns an integer label map in
    the target's grid and affine. One atlas needs no fusion. ``progress``: on a terminal, a bar of
    the atlases (several) and of each registration's optimisation steps (see :mod:`atlasreg.logs`).
    ``transforms``: a list that receives each atlas's Transform (atlas -> target), in atlas order.
    """
    check_atlas_choice(atlases, builtin_atlas)
    method = get_backend(backend)
    resolved = method.resolve_options(backend_options or {})
    fuser = get_fusion(fusion)  # checked with one atlas too: a typo should not pass silently
    fusion_resolved = fuser.resolve_options(fusion_options or {})
    target_v = as_target(target, "target image")
    pairs = resolve_atlases(atlases, builtin_atlas)
    several = len(pairs) > 1
    warped_images, warped_labels = [], []
    for index, (image, labels) in enumerate(progress_bar(pairs, desc=f"registering atlases ({backend})", unit="atlas",
                                                         enabled=progress and several), start=1):
        start = time.perf_counter()
        with step_progress(progress):
            transform = method.register(image, target_v, **resolved)
        log.info("atlas %d of %d registered with %s in %.1f s", index, len(pairs), backend, time.perf_counter() - start)
        if transforms is not None:
            transforms.append(transform)
        warped_labels.append(transform.warp_labels(labels, label_interp))
        if several:
            warped_images.append(transform.warp(image))
    if not several:
        return warped_labels[0]
    return fuser.fuse(target_v, warped_images, warped_labels, **fusion_resolved)


def segment_file(target: str | os.PathLike, output: str | os.PathLike, atlases: Sequence[tuple[str, str]] | None = None,
                 builtin_atlas: str | None = None, progress: bool = False, **method: Any) -> Path:
    """``atlasreg segment`` of one target: its label map written to ``output``, and beside it the
    names of its labels (a BIDS ``dseg.tsv``, :func:`atlasreg.lut.tsv_beside`: the built-in atlas's,
    else those beside the first atlas's label map, else FreeSurfer's where they apply); both are
    checked first to overwrite no input. ``method``: :func:`segment`'s backend, fusion and their options."""
    inputs = (target, *(path for atlas in atlases or () for path in atlas))
    out = check_output(output, inputs=inputs)
    names_out = check_output(tsv_beside(out), inputs=inputs, suffixes=(".tsv",))
    labels = segment(target, atlases, progress=progress, builtin_atlas=builtin_atlas, **method)
    save(labels, out)
    write_dseg_tsv(label_table(labels.labels().tolist(), atlas_names(atlases, builtin_atlas)), names_out)
    return out


def atlas_names(atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> dict[int, LabelInfo] | None:
    """The names of the atlas labels where known: the built-in atlas's (``atlases`` None), else
    those of the ``dseg.tsv`` beside the first atlas's label map."""
    if atlases is not None:
        return names_beside(atlases[0][1]) if atlases else None
    from .atlases import DEFAULT_ATLAS, label_infos

    return label_infos(builtin_atlas or DEFAULT_ATLAS)


def evaluate(pred: ImageLike, truth: ImageLike, protocol: str = "aseg", surface_distance: bool = False,
             label_names: Mapping[int, LabelInfo] | None = None, allow_label_mismatch: bool = False) -> dict[str, Any]:
    """Score the label map ``pred`` against the reference ``truth`` (paths, Volumes, nibabel images
    or (array, affine) pairs) under ``protocol``: :func:`atlasreg.metrics.evaluate`'s result plus
    ``label_names`` ({str(label): name} of the scored labels: ``label_names`` if given, else the
    ``dseg.tsv`` beside ``pred`` or ``truth``, else FreeSurfer's where they apply, else ``label-N``).

    A reference whose label codes do not correspond to the prediction's (another numbering:
    :func:`atlasreg.metrics.check_label_codes`) is refused unless ``allow_label_mismatch``.
    """
    from .metrics import check_label_codes, evaluate as score

    pred_v, truth_v = as_labels(pred, "prediction"), as_labels(truth, "reference")
    if not pred_v.same_grid(truth_v):  # (score checks it too: first, so a grid mismatch is not taken for a code mismatch)
        raise AtlasregError(f"prediction and reference are on different grids (shapes {pred_v.shape} vs {truth_v.shape}, or affines differ)")
    if not allow_label_mismatch:
        check_label_codes(pred_v, truth_v, protocol)
    result = score(pred_v, truth_v, protocol, surface_distance)
    names = label_table([int(label) for label in result["dice"]], label_names or names_beside(pred) or names_beside(truth))
    return {**result, "label_names": {str(label): info.name for label, info in names.items()}}


def several_targets(targets: Sequence[str]) -> bool:
    """Whether ``targets`` (command-line texts) are a study: more than one, a folder or a glob."""
    return len(targets) > 1 or any(is_pattern_or_folder(t) for t in targets)


@dataclass(frozen=True)
class StudyOptions:
    """How a study of many targets runs: ``jobs`` processes of ``threads`` threads each, or a Dask
    cluster (``dask``: a local one of ``jobs`` workers; ``scheduler``: an existing one's address);
    ``lut``: a FreeSurfer LUT or BIDS dseg.tsv naming the labels; ``redo``: remake every output
    of a folder made with other settings."""

    jobs: int = 1
    threads: int | None = None
    dask: bool = False
    scheduler: str | None = None
    lut: str | None = None
    redo: bool = False

    def check_one_target(self) -> None:
        """Refuse study options for a single target (they would be ignored)."""
        if self.jobs != 1 or self.threads or self.dask or self.scheduler or self.lut or self.redo:
            raise AtlasregError("--jobs, --threads, --dask, --scheduler, --lut and --redo are for several targets: give -o an output folder")

    @contextmanager
    def arguments(self) -> Iterator[dict[str, Any]]:
        """Keyword arguments of :func:`segment_many` / :func:`atlasreg.bids.run_participant` for these
        options; a Dask cluster asked for is connected (``scheduler``) for the block and left after."""
        from .batch import DaskLocal, dask_client, threads_per_job
        from .lut import read_lut

        threads_per_job(self.jobs, self.threads)  # refuse bad numbers before anything starts
        if self.dask and self.scheduler:
            raise AtlasregError("give --dask (a local cluster) or --scheduler ADDRESS, not both")
        label_names = read_lut(self.lut) if self.lut else None
        client = dask_client(self.scheduler) if self.scheduler else DaskLocal(self.jobs) if self.dask else None
        try:
            yield {"jobs": self.jobs, "threads": self.threads, "client": client, "label_names": label_names, "redo": self.redo}
        finally:
            if self.scheduler:  # a --dask cluster is closed by the run that started it
                client.close()

    def run(self, study: Callable[..., list[dict[str, Any]]], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """``study(*args, **kwargs)`` run with these options (:meth:`arguments`): its records."""
        with self.arguments() as arguments:
            return study(*args, **kwargs, **arguments)


def segment_study(targets: Sequence[str], out_dir: str | os.PathLike, atlases: Sequence[Atlas] | None = None,
                  builtin_atlas: str | None = None, study: StudyOptions = StudyOptions(), progress: bool = False,
                  command: str | None = None, **method: Any) -> list[dict[str, Any]]:
    """``atlasreg segment`` of several targets (files, folders of NIfTI files, glob patterns) into the
    folder ``out_dir``: :func:`segment_many` run with ``study``'s options; its records."""
    if str(out_dir).endswith(NIFTI_SUFFIXES):
        raise AtlasregError(f"{out_dir}: with several targets, -o is a folder (outputs are named after the inputs)")
    out = check_output(out_dir, suffixes=None)
    paths = expand_targets(targets)
    outputs = [out, out / "index.html", out / STUDY_SETTINGS, *(path for job in plain_jobs(paths, out) for path in job.outputs)]
    for pattern in (t for t in targets if any(c in t for c in "*?[") and not Path(t).is_dir()):
        caught = next((path for path in outputs if glob_matches(pattern, path)), None)
        if caught is not None:
            raise AtlasregError(f"{pattern}: would match the output {caught} (a rerun would take it for a target); "
                                "give -o a folder the pattern does not reach")
    return study.run(segment_many, paths, atlases, out, builtin_atlas=builtin_atlas, progress=progress, command=command, **method)


def study_summary(records: Sequence[Mapping[str, Any]], index: Path) -> tuple[str, list[str]]:
    """A study's records in words: one line of counts (and where its QC index is), one per failed target."""
    failed = [r for r in records if r["status"] == "failed"]
    skipped = sum(r["status"] == "done before" for r in records)
    summary = f"{len(records) - len(failed) - skipped} segmented, {skipped} done before, {len(failed)} failed; QC: {index}"
    return summary, [f"{r['id']}: {r['error']}" for r in failed]


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
    #: the folder the paths in the written record are relative to (None: as given), so that a
    #: study folder can be moved
    root: Path | None = None
    #: the label names beside the label map (a BIDS dseg.tsv, :func:`atlasreg.lut.tsv_beside`); None where
    #: they are kept elsewhere (a BIDS derivatives folder has one dseg.tsv for all its label maps)
    names: Path | None = None
    #: per atlas, where its transform goes (atlas -> target, on the target's grid) and its inverse
    #: (on the atlas's grid), as NIfTI displacement fields; none when empty
    transforms: tuple[tuple[Path, Path], ...] = ()

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file the job writes."""
        return (self.labels, self.volumes, self.figure, self.record, *((self.names,) if self.names else ()), *chain(*self.transforms))


@dataclass(frozen=True)
class SegmentSettings:
    """What every subject of a study shares: the method and the atlas labels' names and colours."""

    backend: str
    fusion: str = DEFAULT_FUSION
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    fusion_options: Mapping[str, Any] = field(default_factory=dict)
    label_interp: str = "nearest"
    label_infos: Mapping[int, LabelInfo] | None = None
    qc: bool = True
    #: digest of the settings that made a study's outputs (see :func:`made_by`): each subject's record
    #: carries it, and only a record of the same settings counts as done on a rerun
    digest: str = ""


def plain_jobs(targets: Sequence[ImageLike], out_dir: str | os.PathLike) -> list[SubjectJob]:
    """Outputs named after the inputs: ``OUT/<name>_seg.nii.gz`` with its label names ``_seg.tsv``, ``_volumes.tsv``,
    ``_qc.png``, ``_seg.json``."""
    out = Path(out_dir)
    jobs, seen = [], {}
    for target in targets:
        path = Path(target)
        stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        if stem in seen:
            raise AtlasregError(f"{seen[stem]} and {path} have the same name: their outputs would collide")
        seen[stem] = path
        jobs.append(SubjectJob(stem, path, out / f"{stem}_seg.nii.gz", out / f"{stem}_volumes.tsv", out / f"{stem}_qc.png",
                               out / f"{stem}_seg.json", root=out, names=tsv_beside(out / f"{stem}_seg.nii.gz")))
    return jobs


def segment_many(
    targets: Sequence[ImageLike],
    atlases: Sequence[Atlas] | None = None,
    out_dir: str | os.PathLike = "atlasreg-out",
    backend: str = DEFAULT_BACKEND,
    fusion: str = DEFAULT_FUSION,
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
    redo: bool = False,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Segment every target into ``out_dir``: label map, volumes table, QC figure and a record per
    target, and ``index.html`` for the run (with the settings and ``command``, the command line that
    asked for it). Returns one record (dict) per target, in input order.

    Finished targets are skipped (resume); a target that fails is recorded with its error and the
    others go on. ``jobs`` processes (``threads`` each) or a Dask ``client`` run targets in parallel.
    ``out_dir/atlasreg_settings.json`` keeps the settings that made the folder's outputs: a run with
    other settings is refused, or with ``redo=True`` makes every target again. Before any work, an
    output that would overwrite an input, or an output folder holding targets, is refused.
    """
    out = check_output(out_dir, suffixes=None)
    study_jobs = plain_jobs(targets, out)
    holding = next((job.target for job in study_jobs if job.target.parent.resolve() == out.resolve()), None)
    if holding is not None:
        raise AtlasregError(f"{out}: holds the target {holding}; give the outputs a folder of their own "
                            "(beside the targets, a rerun would take them for targets)")
    study = prepare_study(out, study_jobs, atlases, builtin_atlas, backend, fusion, backend_options, fusion_options, label_interp,
                          label_names, qc, redo, others=[out / "index.html"])
    records = study.run(study_jobs, jobs=jobs, threads=threads, client=client, progress=progress, work_dir=out)
    from .qc import write_index

    write_index(out / "index.html", records, title=f"atlasreg: {len(records)} targets, {method_label(backend, study.settings.backend_options)}",
                provenance={"Command": command or "called from Python (atlasreg.segment_many)", **study.made})
    return records


@dataclass(frozen=True)
class Study:
    """A study ready to run (:func:`prepare_study`): its atlases loaded once, its settings (with their
    digest) and what its folder's ``atlasreg_settings.json`` records (``made``)."""

    atlases: list[tuple[Volume, Volume]]
    settings: SegmentSettings
    made: dict[str, Any]

    def run(self, study_jobs: Sequence[SubjectJob], jobs: int = 1, threads: int | None = None, client: Any = None,
            progress: bool = False, work_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Every subject not finished before with these settings segmented (:func:`segment_subjects`)."""
        return segment_subjects(study_jobs, self.atlases, self.settings, jobs=jobs, threads=threads, client=client,
                                progress=progress, work_dir=work_dir)


def prepare_study(out: Path, study_jobs: Sequence[SubjectJob], atlases: Sequence[Atlas] | None = None, builtin_atlas: str | None = None,
                  backend: str = DEFAULT_BACKEND, fusion: str = DEFAULT_FUSION, backend_options: Mapping[str, Any] | None = None,
                  fusion_options: Mapping[str, Any] | None = None, label_interp: str = "nearest",
                  label_names: Mapping[int, LabelInfo] | None = None, qc: bool = True, redo: bool = False,
                  others: Iterable[Path] = ()) -> Study:
    """What every study does before its subjects (:func:`segment_many`, :func:`atlasreg.bids.run_participant`):
    refuse an output (a subject's, ``out``'s settings file or one of ``others``) that would overwrite an
    input, load the atlases once, resolve the method's options, and claim ``out`` for these settings
    (a folder made with others is refused unless ``redo``)."""
    check_study_outputs(study_jobs, atlases, [*others, out / STUDY_SETTINGS])
    pairs, names = study_atlases(atlases, builtin_atlas)
    settings = SegmentSettings(backend, fusion, get_backend(backend).resolve_options(backend_options or {}), dict(fusion_options or {}),
                               label_interp, label_names or names, qc)
    made = {"Version": __version__, **made_by(settings, atlases, builtin_atlas)}
    out.mkdir(parents=True, exist_ok=True)
    claim_settings(out / STUDY_SETTINGS, read_settings(out / STUDY_SETTINGS), made, redo)
    return Study(pairs, replace(settings, digest=settings_digest(made)), made)


def check_atlas_choice(atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> None:
    """Refuse atlases and a built-in atlas's name given together."""
    if atlases is not None and builtin_atlas:
        raise AtlasregError("give atlases or a built-in atlas name, not both")


def resolve_atlases(atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> list[tuple[Volume, Volume]]:
    """The (image, labels) pairs to register: ``atlases`` loaded and checked, or (``atlases`` None) the
    built-in atlas ``builtin_atlas`` (default :data:`atlasreg.atlases.DEFAULT_ATLAS`) built. The one
    place both :func:`segment` and a study (:func:`study_atlases`) choose their atlases."""
    check_atlas_choice(atlases, builtin_atlas)
    if atlases is not None:
        return load_atlases(atlases)
    from .atlases import DEFAULT_ATLAS, load_atlas

    image, labels, _ = load_atlas(builtin_atlas or DEFAULT_ATLAS)
    return [(image, labels)]


def study_atlases(atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> tuple[list[tuple[Volume, Volume]], dict[int, LabelInfo] | None]:
    """The atlases loaded (the built-in one built) once for a whole study, and their label names if known."""
    return resolve_atlases(atlases, builtin_atlas), atlas_names(atlases, builtin_atlas)


def check_study_outputs(study_jobs: Sequence[SubjectJob], atlases: Sequence[Atlas] | None, others: Iterable[Path] = ()) -> None:
    """Refuse, before any work, a study output (a subject's, or one of ``others``) that would
    overwrite an input (a target, an atlas file) or whose name no file system takes."""
    outputs = [*(path for job in study_jobs for path in job.outputs), *others]
    for path in outputs:
        check_file_name(path.name, f"output in {path.parent}")
    inputs = [*(job.target for job in study_jobs), *(path for atlas in atlases or () for path in atlas)]
    check_outputs(outputs, [path for path in inputs if isinstance(path, (str, os.PathLike))])


STUDY_SETTINGS = "atlasreg_settings.json"


def made_by(settings: SegmentSettings, atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> dict[str, Any]:
    """What makes a study's outputs what they are (the method, its options, the atlases and their
    contents' checksums, the model's checksum), as plain JSON values: enough to make them again, and to
    tell a rerun of other settings, also one whose atlas file was replaced in place."""
    from .atlases import DEFAULT_ATLAS
    from .models import sha256

    def where(value: Any) -> Any:
        return str(Path(value).resolve()) if isinstance(value, (str, os.PathLike)) else f"in memory ({type(value).__name__})"

    def content(value: ImageLike, labels: bool) -> str:  # of a file's bytes, or of an in-memory volume's grid and values
        if isinstance(value, (str, os.PathLike)):
            return sha256(value)
        volume = as_volume(value, labels, "atlas")
        digest = hashlib.sha256(f"{volume.array.dtype.str} {volume.array.shape}".encode())
        for array in (volume.affine, volume.array):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    entry: dict[str, Any] = {
        "Backend": settings.backend,
        "BackendOptions": dict(settings.backend_options),
        "Fusion": settings.fusion,
        "FusionOptions": dict(settings.fusion_options),
        "LabelInterpolation": settings.label_interp,
        "Atlases": [[where(i), where(l)] for i, l in atlases] if atlases else (builtin_atlas or DEFAULT_ATLAS),
    }
    if atlases:  # a built-in atlas is told by its name and the Version
        entry["AtlasSHA256"] = [[content(i, False), content(l, True)] for i, l in atlases]
    if get_backend(settings.backend).kind == "learned":  # the model actually run: a file, a name or the shipped default
        from .models import resolve

        entry["ModelSHA256"] = sha256(resolve(settings.backend, settings.backend_options.get("model", "")))
    return json.loads(json.dumps(entry))  # tuples become lists, as they read back


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short digest of ``made_by``'s settings, for the records of the subjects they made."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    """A JSON file atlasreg wrote before, or None if there is none; anything unreadable is refused in one line."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AtlasregError(f"{path}: not a readable JSON file atlasreg wrote ({type(exc).__name__}); use another output folder") from None


def read_settings(path: Path) -> dict[str, Any] | None:
    """The settings a study folder's ``atlasreg_settings.json`` keeps, or None in a new folder."""
    settings = read_json(path)
    if settings is not None and not isinstance(settings, dict):
        raise AtlasregError(f"{path}: not a readable atlasreg settings file (not a JSON object); use another output folder")
    return settings


def claim_settings(path: Path, existing: Mapping[str, Any] | None, wanted: Mapping[str, Any], redo: bool,
                   write: Any = None) -> None:
    """Refuse a run whose settings differ from those that made a folder's outputs (``existing``, read
    from ``path``), unless ``redo``; then record ``wanted`` there (``write(path)`` when the file is
    more than the settings, as BIDS' dataset_description.json is)."""
    if existing == wanted:
        return
    if existing is not None and not redo:
        changed = sorted(key for key in {*existing, *wanted} if existing.get(key) != wanted.get(key))
        raise AtlasregError(f"{path.parent} holds outputs made with other settings (differing: {', '.join(changed)}; "
                            f"before: backend {existing.get('Backend')}, atlasreg {existing.get('Version')}): "
                            "use another output folder, or --redo to make every output again with these settings")
    with atomic_path(path) as tmp:
        if write is not None:
            write(tmp)
        else:
            tmp.write_text(json.dumps(wanted, indent=2) + "\n")


def segment_subjects(study_jobs: Sequence[SubjectJob], atlases: list[tuple[Volume, Volume]], settings: SegmentSettings,
                     jobs: int = 1, threads: int | None = None, client: Any = None, progress: bool = False,
                     work_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Run :func:`segment_subject` on every job not finished before with these settings; records in
    job order. ``work_dir``: the output folder (a local Dask cluster's scratch space goes there)."""
    from .batch import run_tasks

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in study_jobs:
        previous = _finished_record(job, settings.digest)
        if previous is not None:
            records[job.id] = {**previous, **_job_paths(job), "status": "done before"}
        else:
            todo.append(job)
    for outcome in run_tasks(segment_subject, todo, (atlases, settings), jobs=jobs, threads=threads, client=client,
                             desc=f"segmenting ({settings.backend})", progress=progress, work_dir=work_dir, unit="subject"):
        job = outcome.task
        records[job.id] = outcome.result if outcome.ok else {**_job_paths(job), "status": "failed", "error": outcome.error,
                                                             "backend": method_label(settings.backend, settings.backend_options)}
        if not outcome.ok:
            log.warning("%s: failed: %s", job.id, outcome.error)
        else:
            log.info("%s: segmented in %.1f s", job.id, outcome.result["seconds"])
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


def _job_paths(job: SubjectJob, relative: bool = False) -> dict[str, Any]:
    """The job's paths as given, or (``relative``) relative to its ``root`` as its record keeps them."""
    def shown(path: Path) -> str:
        return Path(os.path.relpath(path, job.root)).as_posix() if relative and job.root is not None else str(path)

    return {"id": job.id, **{key: shown(getattr(job, key)) for key in ("target", "labels", "volumes", "figure", "record")},
            **({"transforms": [shown(path) for path in chain(*job.transforms)]} if job.transforms else {})}


def _finished_record(job: SubjectJob, digest: str) -> dict[str, Any] | None:
    """The record of a subject finished before with the settings of ``digest``, else None (to do)."""
    if not (job.record.is_file() and job.labels.is_file()):
        return None
    try:
        record = json.loads(job.record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "ok" and record.get("settings") == digest else None


def segment_subject(job: SubjectJob, atlases: list[tuple[Volume, Volume]], settings: SegmentSettings) -> dict[str, Any]:
    """Segment one target with preloaded atlases; write its label map, volumes, QC figure and record."""
    from .morphometry import label_volumes, write_volumes

    start = time.perf_counter()
    target = as_target(job.target, f"target {job.id}")
    transforms: list[Transform] = []
    labels = segment(target, atlases, settings.backend, settings.fusion, settings.backend_options,
                     settings.fusion_options, settings.label_interp, transforms=transforms)
    inverses = []
    for (image, _), transform in zip(atlases, transforms if job.transforms else ()):
        inverses.append(transform.inverse(image))
        report_inversion(inverses[-1], f"{job.id}: the {settings.backend} transform")
    seconds = time.perf_counter() - start
    for path in job.outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    for (forward_path, inverse_path), transform, inverse in zip(job.transforms, transforms, inverses):
        transform.save(forward_path)
        inverse.save(inverse_path)
    save(labels, job.labels)
    if job.names:
        write_dseg_tsv(label_table(labels.labels().tolist(), settings.label_infos), job.names)
    rows = label_volumes(labels, settings.label_infos)
    write_volumes(rows, job.volumes)
    if settings.qc:
        from .qc import subject_figure

        subject_figure(job.figure, target, labels, title=f"{job.id}: {method_label(settings.backend, settings.backend_options)}",
                       names=settings.label_infos)
    record = {**_job_paths(job), "backend": method_label(settings.backend, settings.backend_options), "status": "ok", "error": "", "seconds": round(seconds, 2),
              "peak_rss_mb": round(_peak_rss_mb(), 1), "labels_found": len(rows),
              "total_mm3": round(sum(r["volume_mm3"] for r in rows), 3), "settings": settings.digest}
    write_text(job.record, json.dumps({**record, **_job_paths(job, relative=True)}, indent=1) + "\n")
    return record


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (the worker's, in a parallel run) so far, in MiB."""
    import resource  # POSIX only; atlasreg runs on Linux and macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
