"""Head-to-head comparison (``atlasreg compare``): several backends, or one backend at several
settings, register the same atlases to the same targets and are scored by the same evaluators.

Every method runs on every (atlas, target) pair: one atlas against every target, several atlases
against every target, or leave-one-out over a set of labelled subjects (each one the atlas of all
the others: :func:`leave_one_out_of`); an atlas is never its own target. Every finished
(method, atlas, target) triple is written to ``results.csv`` at once, so an interrupted comparison
resumes where it stopped; a method that fails on a pair is recorded as failed there and the others
go on (and is retried on the next run, unless asked not to). A pair's ``mean`` row is written
after its other rows, so a pair without one (a file cut short) counts as not done. The predicted
label maps are kept under ``segmentations/`` and, for the targets the report draws, each
deformation's picture under ``deformations/``, so the report (see :mod:`atlasreg.report`) can be
redrawn from the folder alone.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .batch import one_line, run_tasks
from .errors import AtlasregError
from .figures import deformation_views
from .io import atomic_path, check_file_name, save
from .metrics import evaluate, folding_percent
from .protocols import get_protocol
from .pipeline import as_image, as_labels, as_target
from .plugin_api import parse_assignments
from .registry import get_backend
from .transform import Transform
from .volume import Volume

COLUMNS = ("method", "atlas", "target", "kind", "structure", "dice", "hd95_mm", "folding_percent", "seconds", "peak_rss_mb",
           "peak_gpu_mb", "status", "error")


@dataclass(frozen=True)
class Contender:
    """One row of the comparison: a backend at given options, named by its spec (e.g. ``ants:preset=quality``)."""

    label: str
    backend: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Target:
    """A labelled subject: a target scored against ``truth``, or an atlas whose labels ``truth`` are."""

    id: str
    image: Path
    truth: Path


def atlas_subjects(atlases: Sequence[Target] | tuple[str | os.PathLike, str | os.PathLike]) -> list[Target]:
    """Atlases as labelled subjects: given so, or one (image, labels) pair, named after its image file."""
    if len(atlases) == 2 and all(isinstance(a, (str, os.PathLike)) for a in atlases):
        image, labels = (Path(a) for a in atlases)
        return [Target(re.sub(r"\.nii(\.gz)?$", "", image.name), image, labels)]
    subjects = list(atlases)
    if not subjects:
        raise AtlasregError("no atlas to compare with")
    seen: dict[str, Path] = {}
    for atlas in subjects:
        if seen.setdefault(atlas.id, atlas.image) != atlas.image:
            raise AtlasregError(f"two atlases are named {atlas.id!r} ({seen[atlas.id]} and {atlas.image}); rename one")
    return subjects


def leave_one_out_of(subjects: Sequence[Target]) -> tuple[list[Target], list[Target]]:
    """(atlases, targets) of a leave-one-out comparison: every subject the atlas of every other one."""
    if len(subjects) < 2:
        raise AtlasregError(f"leave-one-out needs at least 2 labelled subjects, got {len(subjects)}")
    return list(subjects), list(subjects)


def _same_subject(atlas: Target, target: Target) -> bool:
    return atlas.id == target.id or Path(atlas.image).resolve() == Path(target.image).resolve()


def pairs_of(atlases: Sequence[Target], targets: Sequence[Target]) -> list[tuple[Target, Target]]:
    """Every (atlas, target) pair, in target order, except an atlas with itself."""
    return [(atlas, target) for target in targets for atlas in atlases if not _same_subject(atlas, target)]


def figure_atlas(atlases: Sequence[Target], target: Target) -> Target | None:
    """The atlas whose registrations to ``target`` the report draws: the first that is not the target itself."""
    return next((atlas for atlas in atlases if not _same_subject(atlas, target)), None)


def parse_methods(specs: Sequence[str], models: Mapping[str, str] | None = None) -> list[Contender]:
    """``NAME[:KEY=VALUE[:KEY=VALUE...]]`` specs (each may also be a comma-separated list).

    A comma followed by a digit continues a list value (``ants:iterations=40,20,0,affine`` is two
    methods), since no backend name starts with one. ``models`` maps a learned backend's name to its model file (``--model NAME=PATH``); options
    are checked against what each backend declares before anything runs.
    """
    methods: list[Contender] = []
    pieces = [s.strip() for s in re.split(r",(?!\s*\d)", ",".join(specs))]
    for spec in pieces:
        if not spec:
            continue
        name, *pairs = spec.split(":")
        options: dict[str, Any] = parse_assignments(pairs, f"method {spec!r}: option")
        backend = get_backend(name)
        if models and name in models and "model" not in options:
            options["model"] = models[name]
        backend.resolve_options(options)
        if any(m.label == spec for m in methods):
            raise AtlasregError(f"method {spec!r} given twice")
        methods.append(Contender(spec, name, options))
    if not methods:
        raise AtlasregError("no method to compare: give -b NAME[,NAME...]")
    unused = set(models or {}) - {m.backend for m in methods}
    if unused:
        raise AtlasregError(f"--model given for {', '.join(sorted(unused))}, which is not compared")
    return methods


def choose_targets(atlases: Sequence[Sequence[str]] | None = None, targets: str | None = None, truth: str | None = None,
                   dataset: Sequence[str] | None = None, split: str | None = None, atlas_ids: Sequence[str] = (),
                   leave_one_out: bool = False, protocol: str | None = None) -> tuple[list[Target], list[Target], str]:
    """The atlases, the targets with a label map and the protocol of a comparison: targets from
    ``targets``/``truth`` globs, or from ``dataset`` (KIND, ROOT) where ``split`` picks the targets
    (default: its test split if it has one, else every subject) and its protocol is the default.
    Atlases: ``atlases`` (IMAGE, LABELS pairs), subjects of the dataset (``atlas_ids``), or, with
    ``leave_one_out``, every target (each the atlas of all the others). Outside leave-one-out an atlas is never a target."""
    from .datasets import from_globs, open_dataset

    if dataset and (targets or truth):
        raise AtlasregError("give --dataset or --targets/--truth, not both")
    if leave_one_out and (atlases or atlas_ids):
        raise AtlasregError("--leave-one-out takes its atlases from the targets: give no -a or --atlas-id")
    if atlases and atlas_ids:
        raise AtlasregError("give -a or --atlas-id, not both")
    chosen: list[Target] = [subject for pair in atlases or () for subject in atlas_subjects(tuple(pair))]
    if dataset:
        data = open_dataset(dataset[0], dataset[1])
        pool = data.split(split) if split else data.split("test") if "test" in data.splits else data.subjects
        protocol = protocol or data.protocol
        for atlas_id in atlas_ids:
            subject = data.subject(atlas_id)
            if subject.labels is None:
                raise AtlasregError(f"atlas subject {atlas_id} has no label map")
            chosen.append(Target(atlas_id, Path(subject.image), Path(subject.labels)))
    else:
        if not (targets and truth):
            raise AtlasregError("give --targets and --truth (or --dataset KIND ROOT)")
        if atlas_ids:
            raise AtlasregError("--atlas-id needs --dataset")
        pool = from_globs(targets, truth).subjects
    labelled = [Target(s.id, Path(s.image), Path(s.labels)) for s in pool if s.labels is not None]
    if leave_one_out:
        chosen, labelled = leave_one_out_of(labelled)
    if not chosen:
        raise AtlasregError("give the atlas: -a IMAGE LABELS (or --atlas-id with --dataset, or --leave-one-out)")
    chosen = atlas_subjects(chosen)
    atlas_images = {Path(a.image).resolve() for a in chosen}
    picked = labelled if leave_one_out else [t for t in labelled if Path(t.image).resolve() not in atlas_images]
    if not picked:
        raise AtlasregError("no target with a label map to score against")
    return chosen, picked, get_protocol(protocol or "aseg").name


def _safe(label: str) -> str:
    """A method label or target id as a file name: no path separators, no leading dot (so never ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).lstrip(".") or "_"


def segmentation_path(out_dir: Path, method_label: str, atlas_id: str, target_id: str) -> Path:
    """Where the report keeps a method's label map of a target from an atlas: always inside ``out_dir``."""
    return out_dir / "segmentations" / _safe(method_label) / _safe(atlas_id) / f"{_safe(target_id)}.nii.gz"


def deformation_path(out_dir: Path, method_label: str, target_id: str) -> Path:
    """Where the report keeps the picture of a method's deformation of a drawn target (from its figure atlas)."""
    return out_dir / "deformations" / _safe(method_label) / f"{_safe(target_id)}.npz"


def _check_file_names(methods: Sequence[Contender], subjects: Sequence[Target]) -> None:
    """Refuse, before any pair runs, subject ids that would share a file once made safe
    (``a/b`` and ``a_b``), and ids or method labels too long for a file name."""
    seen: dict[str, str] = {}
    for subject in subjects:
        other = seen.setdefault(_safe(subject.id), subject.id)
        if other != subject.id:
            raise AtlasregError(f"subject ids {other!r} and {subject.id!r} give the same file name {_safe(subject.id)!r}; rename one")
        check_file_name(f"{_safe(subject.id)}_overlays.png", f"subject id {subject.id[:40]!r}")
    for method in methods:
        check_file_name(f"{_safe(method.label)}.npz", f"method {method.label[:40]!r}")


def failures(results_path: Path, methods: Sequence[Contender], atlases: Sequence[Target], targets: Sequence[Target]) -> list[str]:
    """One line per (method, atlas, target) of these that ``results_path`` records as failed."""
    wanted = {(m.label, a.id, t.id) for m in methods for a, t in pairs_of(atlases, targets)}
    return [f"{row['method']} on {row['target']}" + (f" from atlas {row['atlas']}" if len(atlases) > 1 else "") + f": {row['error']}"
            for row in read_results(results_path)
            if row["kind"] == "mean" and row["status"] == "failed" and (row["method"], row["atlas"], row["target"]) in wanted]


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 10 ms, Linux
    /proc; elsewhere the process's lifetime peak), plus torch's peak GPU allocation if a GPU was used."""

    def __enter__(self) -> "PeakMemory":
        self.peak_rss_mb = self._rss_mb()
        self.peak_gpu_mb = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        torch = _torch_if_cuda()
        if torch:
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())
        torch = _torch_if_cuda()
        if torch:
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_if_cuda():
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv this module wrote, without rows cut short; a file it did not write is refused."""
    if not path.exists():
        return []
    foreign = AtlasregError(f"{path}: not an atlasreg compare results file; use another output folder")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) == tuple(c for c in COLUMNS if c != "atlas"):
                raise AtlasregError(f"{path}: written by an earlier atlasreg (no atlas column); use another output folder")
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise foreign
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error):  # binary, or not CSV
        raise foreign from None
    return [row for row in rows if _complete(row)]


def _complete(row: dict[str, str | None]) -> bool:
    """Every column present (a row cut mid-way lacks the last ones) and a status we write."""
    return None not in row and all(value is not None for value in row.values()) and row["status"] in ("ok", "failed")


def finished_pairs(rows: Sequence[dict[str, str]], retry_failed: bool = True) -> set[tuple[str, str, str]]:
    """(method, atlas, target) triples with their closing ``mean`` row; failed ones only unless ``retry_failed``."""
    return {(r["method"], r["atlas"], r["target"]) for r in rows
            if r["kind"] == "mean" and (r["status"] == "ok" or not retry_failed)}


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def score_rows(method: Contender, atlas: Target, target: Target, scores: dict, pair: dict[str, float]) -> list[dict[str, Any]]:
    """results.csv rows of one finished pair: each region, each label, then the mean (the pair's closing row)."""
    common = {"method": method.label, "atlas": atlas.id, "target": target.id, "status": "ok", "error": "",
              **{key: _number(value) for key, value in pair.items()}}
    rows = [{**common, "kind": "region", "structure": region, "dice": _number(value), "hd95_mm": ""}
            for region, value in scores["region_dice"].items()]
    for label, value in scores["dice"].items():
        rows.append({**common, "kind": "label", "structure": label, "dice": _number(value),
                     "hd95_mm": _number(scores.get("hd95", {}).get(label))})
    rows.append({**common, "kind": "mean", "structure": "mean", "dice": _number(scores["mean_dice"]),
                 "hd95_mm": _number(scores.get("mean_hd95"))})  # last: it marks the pair as complete
    return rows


def run_compare(
    methods: Sequence[Contender],
    atlases: Sequence[Target] | tuple[str | os.PathLike, str | os.PathLike],
    targets: Sequence[Target],
    protocol: str,
    out_dir: Path,
    progress: bool = True,
    retry_failed: bool = True,
    jobs: int = 1,
    figure_targets: Sequence[str] | None = None,
) -> Path:
    """Run every method on every (atlas, target) pair (:func:`pairs_of`) not already done in
    ``out_dir/results.csv``; returns that file.

    ``atlases``: labelled subjects (:class:`Target`), or one (image, labels) pair; leave-one-out:
    the same subjects as atlases and targets (:func:`leave_one_out_of`). Pairs recorded
    as failed are run again unless ``retry_failed`` is False; rows of unfinished pairs (a file cut
    short) are dropped and those pairs run again. Pairs run through :func:`atlasreg.batch.run_tasks`
    (``jobs`` at a time); each is written as it finishes. The deformations of the targets named in
    ``figure_targets`` (default: all) from their :func:`figure_atlas` are kept for the report.
    """
    atlases = atlas_subjects(atlases)
    if not targets:
        raise AtlasregError("no targets to compare on")
    pairs = pairs_of(atlases, targets)
    if not pairs:
        raise AtlasregError("no (atlas, target) pair: every target is the only atlas")
    drawn = _figure_targets(targets, figure_targets)
    _check_file_names(methods, [*atlases, *(t for t in targets if t not in atlases)])
    results_path = out_dir / "results.csv"
    rows: list[dict[str, Any]] = read_results(results_path)
    done = finished_pairs(rows, retry_failed)
    rows = [r for r in rows if (r["method"], r["atlas"], r["target"]) in done]
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = {atlas.id: _load_atlas(atlas) for atlas in {a.id: a for a, _ in pairs}.values()}
    figure_pairs = {(figure_atlas(atlases, t), t) for t in drawn}
    todo = [(t, m, a, (a, t) in figure_pairs) for a, t in pairs for m in methods if (m.label, a.id, t.id) not in done]
    for outcome in run_tasks(_run_pair, todo, (loaded, protocol, out_dir), jobs=jobs, desc="compare", progress=progress, unit="pair"):
        target, method, atlas, _ = outcome.task
        rows.extend(outcome.result if outcome.ok else [_failed_row(method, atlas, target, outcome.error)])
        _write_results(results_path, rows)
    return results_path


def _figure_targets(targets: Sequence[Target], chosen: Sequence[str] | None) -> list[Target]:
    """The targets the report draws: those named (each must be a target), else all."""
    if not chosen:
        return list(targets)
    known = {t.id: t for t in targets}
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise AtlasregError(f"--figure-target {', '.join(unknown)}: not a target (targets: {', '.join(known)})")
    return [known[c] for c in dict.fromkeys(chosen)]


def _load_atlas(atlas: Target) -> tuple[Volume, Volume]:
    image, labels = as_image(atlas.image, f"atlas {atlas.id} image"), as_labels(atlas.truth, f"atlas {atlas.id} labels")
    if not image.same_grid(labels):
        raise AtlasregError(f"atlas {atlas.id}: image and label map are on different grids (shape or affine differ)")
    return image, labels


def _failed_row(method: Contender, atlas: Target, target: Target, message: str) -> dict[str, Any]:
    return {**dict.fromkeys(COLUMNS, ""), "method": method.label, "atlas": atlas.id, "target": target.id, "kind": "mean",
            "structure": "mean", "status": "failed", "error": message}


def _run_pair(pair: tuple[Target, Contender, Target, bool], atlases: Mapping[str, tuple[Volume, Volume]], protocol: str,
              out_dir: Path) -> list[dict[str, Any]]:
    """One (target, method, atlas) triple, the target loaded here so that pairs can run in other processes;
    the atlases were loaded once (``atlases``: by id)."""
    target, method, atlas, figure = pair
    image, truth = as_target(target.image, f"target {target.id}"), as_labels(target.truth, f"truth {target.id}")
    if not image.same_grid(truth):
        raise AtlasregError(f"target {target.id}: image and truth are on different grids")
    return _run_one(method, atlas, target, *atlases[atlas.id], image, truth, protocol, out_dir, figure=figure)


def _run_one(method: Contender, atlas: Target, target: Target, atlas_image: Volume, atlas_labels: Volume, image: Volume, truth: Volume,
             protocol: str, out_dir: Path, figure: bool) -> list[dict[str, Any]]:
    backend = get_backend(method.backend)
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            transform = backend.register(atlas_image, image, **backend.resolve_options(method.options))
            seconds = time.perf_counter() - start
        warped = transform.warp_labels(atlas_labels)
        scores = evaluate(warped, truth, protocol, surface_distance=True)
        folding = folding_percent(transform.jacobian_determinant(), truth.array > 0)
    except Exception as exc:  # a failing method costs its own pair, never the comparison
        return [_failed_row(method, atlas, target, one_line(exc))]
    segmentation = segmentation_path(out_dir, method.label, atlas.id, target.id)
    segmentation.parent.mkdir(parents=True, exist_ok=True)
    save(warped, segmentation)
    if figure:
        _save_deformation(deformation_path(out_dir, method.label, target.id), transform, truth)
    pair = {"folding_percent": folding, "seconds": seconds, "peak_rss_mb": memory.peak_rss_mb, "peak_gpu_mb": memory.peak_gpu_mb}
    return score_rows(method, atlas, target, scores, pair)


def _save_deformation(path: Path, transform: Transform, truth: Volume) -> None:
    """The non-linear part of ``transform``, three slices (for the report): where each voxel pulls
    from and the Jacobian determinant (local volume change)."""
    nonlinear = Transform.from_field(truth, transform.field) if transform.field is not None else Transform.identity(truth)
    views = deformation_views(nonlinear.mapped_points(), nonlinear.jacobian_determinant(), truth)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **views)
