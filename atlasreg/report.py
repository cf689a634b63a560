"""The report of ``atlasreg compare``, drawn from its folder: ``summary.md`` in the layout of the
paper's Tables 1-2 (one row per method, one column per region, then AVG, seconds and folding;
mean ± std over targets; best per column in bold), a paired Wilcoxon signed-rank test of each
method against the best, ``dice_boxplot.png``, ``overlays.png`` and ``deformation.png``."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .compare import Method, Target, _safe, read_results, segmentation_path
from .figures import deformation_figure, dice_boxplot, overlay_figure
from .io import atomic_path, load
from .metrics import finite_mean
from .protocols import get_protocol


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (NaN, NaN if none)."""
    finite = [v for v in values if math.isfinite(v)]
    return finite_mean(finite), float(np.std(finite)) if finite else math.nan


def collect(rows: list[dict[str, str]], methods: Sequence[str]) -> dict:
    """Per method: Dice per target (mean and each region), seconds, folding, memory, failures."""
    data = {m: {"mean": {}, "regions": defaultdict(dict), "seconds": [], "folding": [], "rss": [], "gpu": [], "failed": []} for m in methods}
    for row in rows:
        entry = data.get(row["method"])
        if entry is None:
            continue
        if row["status"] == "failed":
            entry["failed"].append(row["target"])
        elif row["kind"] == "mean":
            entry["mean"][row["target"]] = _float(row["dice"])
            entry["seconds"].append(_float(row["seconds"]))
            entry["folding"].append(_float(row["folding_percent"]))
            entry["rss"].append(_float(row["peak_rss_mb"]))
            entry["gpu"].append(_float(row["peak_gpu_mb"]))
        elif row["kind"] == "region":
            entry["regions"][row["structure"]][row["target"]] = _float(row["dice"])
    return data


def wilcoxon_vs_best(data: dict) -> tuple[str | None, dict[str, tuple[float, int, float]]]:
    """(best method by mean Dice, {method: (Δ mean Dice vs best, n paired targets, two-sided p)})."""
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


def summary_markdown(data: dict, protocol: str, atlas: str, n_targets: int) -> str:
    chosen = get_protocol(protocol)
    regions = list(chosen.regions)
    columns = [(r, "dice") for r in regions] + [("AVG", "dice"), ("s / pair", "low"), ("% folding", "low"), ("peak RSS MB", "low")]
    cells: dict[str, list[tuple[float, float]]] = {}
    for method, d in data.items():
        values = [_mean_std(list(d["regions"][r].values())) for r in regions]
        values += [_mean_std(list(d["mean"].values())), _mean_std(d["seconds"]), _mean_std(d["folding"]), _mean_std(d["rss"])]
        cells[method] = values
    best = []
    for k, (_, sense) in enumerate(columns):
        finite = [cells[m][k][0] for m in cells if math.isfinite(cells[m][k][0])]
        best.append((max(finite) if sense == "dice" else min(finite)) if finite else math.nan)
    avg_name = "mean over labels" if chosen.mean_over == "labels" else "mean over regions"
    lines = [f"Atlas {atlas} → {n_targets} targets, protocol `{protocol}` ({chosen.description}). "
             f"Cells: mean ± std over targets; AVG = {avg_name}; best per column in **bold**.", "",
             "| method | " + " | ".join(c for c, _ in columns) + " | failed |", "|---|" + "---:|" * (len(columns) + 1)]
    for method, values in cells.items():
        row = []
        for k, ((name, sense), (mean, std)) in enumerate(zip(columns, values)):
            if not math.isfinite(mean):
                row.append("–")
                continue
            digits = 3 if sense == "dice" else (3 if name == "% folding" else 1)
            text = f"{mean:.{digits}f} ± {std:.{digits}f}"
            row.append(f"**{text}**" if mean == best[k] else text)
        failed = len(data[method]["failed"])
        lines.append(f"| {method} | " + " | ".join(row) + f" | {failed or ''} |")
    gpu = {m: _mean_std(d["gpu"])[0] for m, d in data.items() if math.isfinite(_mean_std(d["gpu"])[0])}
    if gpu:
        lines += ["", "Peak GPU allocation (MB): " + ", ".join(f"{m} {v:.0f}" for m, v in gpu.items())]
    best_method, tests = wilcoxon_vs_best(data)
    if best_method:
        lines += ["", f"Paired Wilcoxon signed-rank test of each method against the best ({best_method}), on per-target AVG Dice:", "",
                  "| method | Δ AVG vs best | targets | p (two-sided) |", "|---|---:|---:|---:|"]
        for method, (delta, n, p) in tests.items():
            lines.append(f"| {method} | {delta:+.3f} | {n} | {'n/a' if not math.isfinite(p) else f'{p:.3g}'} |")
        smallest = 2 / 2 ** n_targets if n_targets else math.nan
        lines += ["", f"With {n_targets} targets the smallest two-sided p the test can give is {smallest:.3g}."]
    for method, d in data.items():
        if d["failed"]:
            lines.append(f"\n{method} failed on: {', '.join(d['failed'])} (reason in results.csv).")
    lines += ["", "Seconds: the backend's registration only (files, label warp and scoring excluded). "
              "Peak RSS: the whole process's resident memory while that registration ran."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, methods: Sequence[Method], atlas: tuple[Path, Path], targets: Sequence[Target], protocol: str) -> list[Path]:
    """summary.md and the three figures, from ``out_dir/results.csv`` and the kept segmentations."""
    rows = read_results(out_dir / "results.csv")
    labels = [m.label for m in methods]
    data = collect(rows, labels)
    written = []
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(summary_markdown(data, protocol, Path(atlas[0]).name, len(targets)))
    written.append(out_dir / "summary.md")
    regions = list(get_protocol(protocol).regions) or ["mean"]
    scores = {r: {m: list((data[m]["regions"][r] if r != "mean" else data[m]["mean"]).values()) for m in labels} for r in regions}
    if protocol != "labels":
        scores["AVG"] = {m: list(data[m]["mean"].values()) for m in labels}
    written.append(dice_boxplot(out_dir / "dice_boxplot.png", scores, title=f"Dice per region over {len(targets)} targets ({protocol})"))
    first = targets[0]
    predictions = {}
    for label in labels:
        path = segmentation_path(out_dir, label, first.id)
        if path.exists():
            predictions[label] = load(path, labels=True)
    if predictions:
        written.append(overlay_figure(out_dir / "overlays.png", load(first.image), load(first.truth, labels=True), predictions,
                                      title=f"atlas {Path(atlas[0]).name} → target {first.id}"))
    views = {}
    for label in labels:
        path = out_dir / "deformations" / f"{_safe(label)}.npz"
        if path.exists():
            with np.load(path) as saved:
                views[label] = [saved[f"arr_{k}"] for k in range(3)]
    if views:
        written.append(deformation_figure(out_dir / "deformation.png", views, title=f"non-linear part of each deformation, target {first.id}"))
    return written
