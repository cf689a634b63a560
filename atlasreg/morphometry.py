"""Morphometry of a label map: voxels and mm³ per label, as a TSV table (label, name, voxels, volume_mm3);
BIDS derivatives call these tables _morph.tsv (the Volume type itself is in :mod:`atlasreg.volume`).

A voxel's volume is |det| of the affine's 3x3 part, so anisotropic and oblique grids are measured
exactly; the table lists every non-zero label present, named from a colour table (see :mod:`atlasreg.lut`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import AtlasregError
from .io import atomic_path
from .lut import LabelInfo, label_table
from .volume import Volume

COLUMNS = ("label", "name", "voxels", "volume_mm3")


def voxel_volume_mm3(volume: Volume) -> float:
    """Volume of one voxel in mm³."""
    return float(abs(np.linalg.det(volume.affine[:3, :3])))


def label_volumes(labels: Volume, names: Mapping[int, LabelInfo] | None = None) -> list[dict[str, Any]]:
    """One row per non-zero label present: label, name, voxels, volume_mm3 (rounded to 0.001 mm³)."""
    if not labels.is_labels:
        raise AtlasregError("volumes need an integer label map, got an intensity image")
    values, counts = np.unique(labels.array, return_counts=True)
    keep = values != 0
    values, counts = values[keep], counts[keep]
    table = label_table(values.tolist(), names)
    size = voxel_volume_mm3(labels)
    return [{"label": int(v), "name": table[int(v)].name, "voxels": int(n), "volume_mm3": round(int(n) * size, 3)}
            for v, n in zip(values, counts)]


def write_volumes(rows: list[dict[str, Any]], path: str | os.PathLike, columns: tuple[str, ...] = COLUMNS) -> Path:
    """Write ``rows`` as a tab-separated table (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return path


def volumes_text(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """``rows`` as the tab-separated table ``atlasreg volumes`` prints (header first)."""
    return "\n".join("\t".join(line) for line in [columns, *([str(row[c]) for c in columns] for row in rows)])


def read_volumes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a table written by :func:`write_volumes`, numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not set(COLUMNS) <= set(rows[0]):
        raise AtlasregError(f"{path}: not an atlasreg volumes table (needs columns {', '.join(COLUMNS)})")
    return [{**row, "label": int(row["label"]), "voxels": int(row["voxels"]), "volume_mm3": float(row["volume_mm3"])}
            for row in rows]
