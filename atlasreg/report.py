"""The report of ``atlasreg compare``, drawn from its folder: ``summary.md`` in the layout of the
paper's Tables 1-2 (one row per method, one column per region, then AVG, HD95, seconds and
folding; mean ± std over (atlas, target) pairs; best per column in bold), a paired Wilcoxon
signed-rank test of each method against the best, ``dice_boxplot.png``, and per drawn target
``figures/<target>_overlays.png`` and ``figures/<target>_deformation.png``."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .compare import (Contender, Target, _figure_targets, _safe, atlas_subjects, choose_targets, deformation_path, failures, figure_atlas,
                      pairs_of, parse_methods, read_results, run_compare, segmentation_path)
from .figures import deformation_figure, dice_boxplot, overlay_figure
from .io import check_output, load, write_text
from .metrics import finite_mean
from .plugin_api import parse_assignments
from .protocols import get_protocol


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (NaN, NaN if none)."""
    finite = [v for v in values if math.isfinite(v)]
    return finite_mean(finite), float(np.std(finite)) if finite else math.nan


def _pair_name(row: dict[str, str]) -> str:
    """A pair as the report names it: the target, after its atlas when the rows have one."""
    return f"{row['atlas']} → {row['target']}" if row.get("atlas") else row["target"]


def collect(rows: list[dict[str, str]], methods: Sequence[str]) -> dict:
    """Per method: Dice per (atlas, target) pair (mean and each region), HD95, seconds, folding, memory, failures."""
    data = {m: {"mean": {}, "regions": defaultdict(dict), "hd95": [], "seconds": [], "folding": [], "rss": [], "gpu": [], "failed": []}
            for m in methods}
    for row in rows:
        entry = data.get(row["method"])
        if entry is None:
            continue
        pair = _pair_name(row)
        if row["status"] == "failed":
            entry["failed"].append(pair)
        elif row["kind"] == "mean":
            entry["mean"][pair] = _float(row["dice"])
            entry["hd95"].append(_float(row.get("hd95_mm", "")))
            entry["seconds"].append(_float(row["seconds"]))
            entry["folding"].append(_float(row["folding_percent"]))
            entry["rss"].append(_float(row["peak_rss_mb"]))
            entry["gpu"].append(_float(row["peak_gpu_mb"]))
        elif row["kind"] == "region":
            entry["regions"][row["structure"]][pair] = _float(row["dice"])
    return data


def wilcoxon_vs_best(data: dict) -> tuple[str | None, dict[str, tuple[float, int, float]]]:
    """(best method by mean Dice, {method: (Δ mean Dice vs best, n paired (atlas, target) pairs, two-sided p)})."""
    from scipy.stats import wilcoxon

    means = {m: _mean_std(list(d["mean"].values()))[0] for m, d in data.items()}
    ranked = [m for m in means if math.isfinite(means[m])]
    if not ranked:
        return None, {}
    best = max(ranked, key=lambda m: means[m])
    tests = {}
    for method in ranked:
        if method == best:
            continue
        common = sorted(set(data[method]["mean"]) & set(data[best]["mean"]))
        x = np.array([data[method]["mean"][t] for t in common])
        y = np.array([data[best]["mean"][t] for t in common])
        p = math.nan
        if len(common) >= 2 and np.any(x != y):
            p = float(wilcoxon(x, y).pvalue)
        tests[method] = (means[method] - means[best], len(common), p)
    return best, tests


def summary_markdown(data: dict, protocol: str, atlas: str, n_targets: int, n_pairs: int | None = None) -> str:
    """The summary table; ``atlas`` names the atlases, ``n_pairs`` (default ``n_targets``) the (atlas, target) pairs."""
    n_pairs = n_targets if n_pairs is None else n_pairs
    chosen = get_protocol(protocol)
    regions = list(chosen.regions)
    columns = [(r, "dice") for r in regions] + [("AVG", "dice"), ("HD95 mm", "low"), ("s / pair", "low"), ("% folding", "low"),
                                                ("peak RSS MB", "low")]
    cells: dict[str, list[tuple[float, float]]] = {}
    for method, d in data.items():
        values = [_mean_std(list(d["regions"][r].values())) for r in regions]
        values += [_mean_std(list(d["mean"].values())), _mean_std(d["hd95"]), _mean_std(d["seconds"]), _mean_std(d["folding"]),
                   _mean_std(d["rss"])]
        cells[method] = values
    best = []
    for k, (_, sense) in enumerate(columns):
        finite = [cells[m][k][0] for m in cells if math.isfinite(cells[m][k][0])]
        best.append((max(finite) if sense == "dice" else min(finite)) if finite else math.nan)
    avg_name = "mean over labels" if chosen.mean_over == "labels" else "mean over regions"
    over = "targets" if n_pairs == n_targets else f"(atlas, target) pairs ({n_pairs})"
    lines = [f"{'Atlases' if ', ' in atlas else 'Atlas'} {atlas} → {n_targets} targets, protocol `{protocol}` ({chosen.description}). "
             f"Cells: mean ± std over {over}; AVG = {avg_name}; HD95 = 95th-percentile Hausdorff distance, mean over the labels "
             "both maps have; best per column in **bold**.", "",
             "| method | " + " | ".join(c for c, _ in columns) + " | failed |", "|---|" + "---:|" * (len(columns) + 1)]
    for method, values in cells.items():
        row = []
        for k, ((name, sense), (mean, std)) in enumerate(zip(columns, values)):
            if not math.isfinite(mean):
                row.append("–")
                continue
            digits = 3 if sense == "dice" else (3 if name == "% folding" else 2 if name == "HD95 mm" else 1)
            text = f"{mean:.{digits}f} ± {std:.{digits}f}"
            row.append(f"**{text}**" if mean == best[k] else text)
        failed = len(data[method]["failed"])
        lines.append(f"| {method} | " + " | ".join(row) + f" | {failed or ''} |")
    gpu = {m: _mean_std(d["gpu"])[0] for m, d in data.items() if math.isfinite(_mean_std(d["gpu"])[0])}
    if gpu:
        lines += ["", "Peak GPU allocation (MB): " + ", ".join(f"{m} {v:.0f}" for m, v in gpu.items())]
    best_method, tests = wilcoxon_vs_best(data)
    if best_method:
        unit = "target" if n_pairs == n_targets else "pair"
        lines += ["", f"Paired Wilcoxon signed-rank test of each method against the best ({best_method}), on per-{unit} AVG Dice:", "",
                  f"| method | Δ AVG vs best | {unit}s | p (two-sided) |", "|---|---:|---:|---:|"]
        for method, (delta, n, p) in tests.items():
            lines.append(f"| {method} | {delta:+.3f} | {n} | {'n/a' if not math.isfinite(p) else f'{p:.3g}'} |")
        smallest = 2 / 2 ** n_pairs if n_pairs else math.nan
        lines += ["", f"With {n_pairs} {unit}s the smallest two-sided p the test can give is {smallest:.3g}."]
        if unit == "pair":
            lines += ["Pairs sharing a target or an atlas are not independent: read p as a guide, not a test."]
    for method, d in data.items():
        if d["failed"]:
            lines.append(f"\n{method} failed on: {', '.join(d['failed'])} (reason in results.csv).")
    lines += ["", "Seconds: the backend's registration only (files, label warp and scoring excluded). "
              "Peak RSS: the whole process's resident memory while that registration ran."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, methods: Sequence[Contender], atlases: Sequence[Target] | tuple[Path, Path], targets: Sequence[Target],
                 protocol: str, figure_targets: Sequence[str] | None = None) -> list[Path]:
    """summary.md, the box plot and, per drawn target (``figure_targets``, default all), its overlays
    and deformations, from ``out_dir/results.csv`` and the kept segmentations."""
    atlases = atlas_subjects(atlases)
    rows = read_results(out_dir / "results.csv")
    labels = [m.label for m in methods]
    data = collect(rows, labels)
    written = []
    names = ", ".join([Path(a.image).name for a in atlases[:3]] + ([f"… ({len(atlases)} in all)"] if len(atlases) > 3 else []))
    write_text(out_dir / "summary.md", summary_markdown(data, protocol, names, len(targets), len(pairs_of(atlases, targets))))
    written.append(out_dir / "summary.md")
    regions = list(get_protocol(protocol).regions) or ["mean"]
    scores = {r: {m: list((data[m]["regions"][r] if r != "mean" else data[m]["mean"]).values()) for m in labels} for r in regions}
    if protocol != "labels":
        scores["AVG"] = {m: list(data[m]["mean"].values()) for m in labels}
    written.append(dice_boxplot(out_dir / "dice_boxplot.png", scores, title=f"Dice per region over {len(pairs_of(atlases, targets))} pairs ({protocol})"))
    for target in _figure_targets(targets, figure_targets):
        written += _target_figures(out_dir, labels, figure_atlas(atlases, target), target)
    return written


def _target_figures(out_dir: Path, labels: Sequence[str], atlas: Target | None, target: Target) -> list[Path]:
    """``figures/<target>_overlays.png`` (truth and every method's labels from ``atlas``) and
    ``figures/<target>_deformation.png``, of the methods whose results are there."""
    if atlas is None:
        return []
    written = []
    predictions = {}
    for label in labels:
        path = segmentation_path(out_dir, label, atlas.id, target.id)
        if path.exists():
            predictions[label] = load(path, labels=True)
    folder = out_dir / "figures"
    if predictions:
        folder.mkdir(exist_ok=True)
        written.append(overlay_figure(folder / f"{_safe(target.id)}_overlays.png", load(target.image), load(target.truth, labels=True),
                                      predictions, title=f"atlas {atlas.id} → target {target.id}"))
    views = {}
    for label in labels:
        path = deformation_path(out_dir, label, target.id)
        if path.exists():
            with np.load(path) as saved:
                views[label] = {key: saved[key] for key in saved.files}
    if views:
        folder.mkdir(exist_ok=True)
        written.append(deformation_figure(folder / f"{_safe(target.id)}_deformation.png", views,
                                          title=f"non-linear part of each deformation, atlas {atlas.id} → target {target.id}"))
    return written


@dataclass(frozen=True)
class Comparison:
    """A finished ``atlasreg compare``: the report files written, summary.md's text, one line per
    failed pair, and how many pairs were compared."""

    written: list[Path]
    summary: str
    failed: list[str]
    pairs: int


def run_comparison(specs: Sequence[str], output: str, models: Sequence[str] = (), retry_failed: bool = True, jobs: int = 1,
                   progress: bool = True, figure_targets: Sequence[str] = (), **choice) -> Comparison:
    """``atlasreg compare``: the methods of ``specs`` (``NAME[:KEY=VALUE...]``, ``models``:
    ``NAME=MODEL.pt``) run on the atlases and targets :func:`atlasreg.compare.choose_targets` picks
    from ``choice``, resuming in the folder ``output``, and its report written there (figures of
    ``figure_targets``, default every target)."""
    atlases, targets, protocol = choose_targets(**choice)
    methods = parse_methods(specs, parse_assignments(models, "--model"))
    out = check_output(output, suffixes=None)
    results = run_compare(methods, atlases, targets, protocol, out, progress=progress, retry_failed=retry_failed, jobs=jobs,
                          figure_targets=figure_targets)
    written = write_report(out, methods, atlases, targets, protocol, figure_targets)
    return Comparison(written, (out / "summary.md").read_text(), failures(results, methods, atlases, targets),
                      len(methods) * len(pairs_of(atlases, targets)))
