"""PNG figures shared by the demo and `atlasreg compare`: label overlays on three orthogonal
slices (the paper's Figure 2), warped grids of each deformation (Figure 3's last column), and
Dice box plots. Volumes are turned to RAS voxel order first (axis flips and swaps only, no
resampling), so array slices plot as axial, coronal and sagittal views. Matplotlib runs
headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .io import atomic_path
from .spatial import reorient
from .volume import Volume


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)
    return path


def label_colours(max_label: int) -> np.ndarray:
    """A fixed RGBA colour per label value (label 0 transparent), the same in every panel."""
    colours = np.full((max_label + 1, 4), 0.5)  # alpha 0.5: the image shows through
    colours[:, :3] = np.random.default_rng(3).uniform(0.15, 1.0, (max_label + 1, 3))
    colours[0] = 0.0
    return colours


#: the anatomical side at the left and right edge of each view (RAS voxel order, origin lower: neurological convention)
SIDES = {"axial": ("L", "R"), "coronal": ("L", "R"), "sagittal": ("P", "A")}


def _mark_sides(ax, view: str) -> None:
    """The subject's sides on the left and right edge of a view, so no one reads left for right."""
    for x, side, align in ((0.02, SIDES[view][0], "left"), (0.98, SIDES[view][1], "right")):
        ax.text(x, 0.5, side, transform=ax.transAxes, ha=align, va="center", fontsize=8, fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def _cuts(truth: np.ndarray):
    """Axial, coronal and sagittal slices through the labelled region (sagittal off the midline)."""
    centre = np.round(np.argwhere(truth > 0).mean(axis=0)).astype(int) if truth.any() else np.array(truth.shape) // 2
    sagittal = min(centre[0] + max(1, truth.shape[0] // 8), truth.shape[0] - 1)
    return (
        ("axial", lambda a: a[:, :, centre[2]].T),
        ("coronal", lambda a: a[:, centre[1], :].T),
        ("sagittal", lambda a: a[sagittal, :, :].T),
    )


def overlay_figure(
    path: Path, image: Volume, truth: Volume, predictions: Mapping[str, Volume], title: str = "", truth_name: str = "ground truth",
    colours: np.ndarray | None = None,
) -> Path:
    """The target image, then the truth and each prediction overlaid, on the same three slices.

    ``colours``: RGBA per label value (see :func:`label_colours`), e.g. from a colour table.
    """
    plt = _pyplot()
    image, truth = reorient(image), reorient(truth)
    cuts = _cuts(truth.array)
    rows = [("target image", None), (truth_name, truth), *((name, reorient(v)) for name, v in predictions.items())]
    if colours is None:
        colours = label_colours(max(int(v.array.max()) for _, v in rows[1:] if v is not None))
    vmax = float(np.percentile(image.array, 99.5))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for (name, labels), row in zip(rows, axes):
        for (view, cut), ax in zip(cuts, row):
            ax.imshow(cut(image.array), cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if labels is not None:
                ax.imshow(colours[cut(labels.array)], origin="lower")
            _mark_sides(ax, view)
            ax.set_xticks([])
            ax.set_yticks([])
            if name == rows[0][0]:
                ax.set_title(view)
        row[0].set_ylabel(name)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title above the view names
    return _save(fig, path)


#: the RAS world axes across and up each view (the two coordinates whose lines draw its grid)
IN_PLANE = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def deformation_views(mapped: np.ndarray, jacobian: np.ndarray, truth: Volume) -> dict[str, np.ndarray]:
    """What :func:`deformation_figure` draws of one deformation on ``truth``'s grid, three slices
    through its labelled region: per view the Jacobian determinant (``<view>_jacobian``) and the two
    in-plane world coordinates (mm) each voxel pulls from (``<view>_<axis>``), kept small on disk.
    ``mapped``: (X, Y, Z, 3) RAS points, as :meth:`Transform.mapped_points`."""
    cuts = _cuts(reorient(truth).array)

    def sliced(array: np.ndarray) -> list[np.ndarray]:
        oriented = reorient(Volume(np.asarray(array, np.float32), truth.affine, is_labels=False)).array
        return [cut(oriented) for _, cut in cuts]

    views = {f"{view}_jacobian": data for (view, _), data in zip(cuts, sliced(jacobian))}
    for axis in range(3):
        for (view, _), data in zip(cuts, sliced(mapped[..., axis])):
            if axis in IN_PLANE[view]:
                views[f"{view}_{axis}"] = data
    return views


#: colour range of the Jacobian determinant: 0 (and folding below) to 2, 1 (no volume change) white
JACOBIAN_RANGE = (0.0, 1.0, 2.0)
GRID_LINES = 12


def deformation_figure(path: Path, views: Mapping[str, Mapping[str, np.ndarray]], title: str = "") -> Path:
    """One row per method (``views[method]`` from :func:`deformation_views`): its non-linear
    deformation as a warped grid (lines of equal source coordinate) over its Jacobian determinant
    (blue: shrinks, red: grows, darkest blue: folds), three views, with the colour key below."""
    from matplotlib.colors import TwoSlopeNorm

    plt = _pyplot()
    fig, axes = plt.subplots(len(views), 3, figsize=(10, 3 * len(views) + 1.2), squeeze=False)
    norm = TwoSlopeNorm(vmin=JACOBIAN_RANGE[0], vcenter=JACOBIAN_RANGE[1], vmax=JACOBIAN_RANGE[2])
    shown = None
    for (name, arrays), row in zip(views.items(), axes):
        for view, ax in zip(IN_PLANE, row):
            shown = ax.imshow(arrays[f"{view}_jacobian"], cmap="RdBu_r", norm=norm, origin="lower")
            for axis in IN_PLANE[view]:
                coordinate = arrays[f"{view}_{axis}"]
                levels = np.linspace(float(coordinate.min()), float(coordinate.max()), GRID_LINES + 2)[1:-1]
                if levels[-1] > levels[0]:
                    ax.contour(coordinate, levels=levels, colors="black", linewidths=0.6, origin="lower")
            _mark_sides(ax, view)
            ax.set_xticks([])
            ax.set_yticks([])
            if row is axes[0]:
                ax.set_title(view)
        row[0].set_ylabel(name)
    fig.suptitle(title)
    bottom = 1.2 / (3 * len(views) + 1.2)
    fig.tight_layout(rect=(0, bottom, 1, 0.98))  # room for the title above and the key below
    key = fig.add_axes((0.2, bottom * 0.55, 0.6, bottom * 0.18))
    fig.colorbar(shown, cax=key, orientation="horizontal", extend="both",
                 label="Jacobian determinant: < 1 shrinks, > 1 grows, ≤ 0 folds; lines: the warped grid")
    return _save(fig, path)


def dice_boxplot(path: Path, scores: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Path:
    """Grouped box plots: ``scores[group][method]`` = Dice over targets; one colour per method."""
    plt = _pyplot()
    groups = list(scores)
    methods = list(dict.fromkeys(m for group in scores.values() for m in group))
    width = 0.8 / max(1, len(methods))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(min(18.0, 4.0 + 0.25 * len(groups) * max(2, len(methods))), 5.0))
    for k, method in enumerate(methods):
        data = [[v for v in scores[g].get(method, []) if np.isfinite(v)] for g in groups]
        positions = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(groups))]
        kept = [(p, d) for p, d in zip(positions, data) if d]
        if not kept:
            continue
        box = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=width * 0.9, patch_artist=True,
                         showfliers=False, manage_ticks=False)
        for patch in box["boxes"]:
            patch.set_facecolor(colours(k % 10))
        ax.plot([], [], color=colours(k % 10), linewidth=8, label=method)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # no method with a score (every pair failed): no legend, and no warning
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
