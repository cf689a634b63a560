"""Label names and colours: FreeSurfer's aseg and aparc+aseg entries (built in) and colour tables users give.

``ASEG`` holds the entries of FreeSurfer's ``FreeSurferColorLUT.txt`` (FreeSurfer 7 naming, e.g.
10 = Left-Thalamus, formerly Left-Thalamus-Proper) for the labels of an ``aseg.mgz`` segmentation:
the structures the shared label maps and the VoxelMorph/SynthSeg literature use; ``FREESURFER`` adds
the Desikan-Killiany cortical parcels of ``aparc+aseg.mgz`` (1001-1035, 2001-2035), the codes of
atlasreg's built-in atlas. A user's table is
read from either format atlasreg meets: a FreeSurfer LUT (``id name R G B A`` per line, ``#``
comments) or a BIDS ``dseg.tsv`` (columns ``index``, ``name`` and optionally ``color`` as #RRGGBB).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import AtlasregError


@dataclass(frozen=True)
class LabelInfo:
    """A label's name and, where known, its display colour (R, G, B in 0-255)."""

    name: str
    colour: tuple[int, int, int] | None = None

    @property
    def hex_colour(self) -> str:
        """``#rrggbb``, or ``n/a`` (the BIDS spelling of a missing value)."""
        return "#{:02x}{:02x}{:02x}".format(*self.colour) if self.colour else "n/a"


# Source: FreeSurferColorLUT.txt of FreeSurfer 7 ($FREESURFER_HOME/FreeSurferColorLUT.txt; older releases
# coloured 41 green and called 10/49 Thalamus-Proper).
ASEG: dict[int, LabelInfo] = {
    label: LabelInfo(name, colour)
    for label, name, colour in (
        (2, "Left-Cerebral-White-Matter", (245, 245, 245)),
        (3, "Left-Cerebral-Cortex", (205, 62, 78)),
        (4, "Left-Lateral-Ventricle", (120, 18, 134)),
        (5, "Left-Inf-Lat-Vent", (196, 58, 250)),
        (7, "Left-Cerebellum-White-Matter", (220, 248, 164)),
        (8, "Left-Cerebellum-Cortex", (230, 148, 34)),
        (10, "Left-Thalamus", (0, 118, 14)),
        (11, "Left-Caudate", (122, 186, 220)),
        (12, "Left-Putamen", (236, 13, 176)),
        (13, "Left-Pallidum", (12, 48, 255)),
        (14, "3rd-Ventricle", (204, 182, 142)),
        (15, "4th-Ventricle", (42, 204, 164)),
        (16, "Brain-Stem", (119, 159, 176)),
        (17, "Left-Hippocampus", (220, 216, 20)),
        (18, "Left-Amygdala", (103, 255, 255)),
        (24, "CSF", (60, 60, 60)),
        (25, "Left-Lesion", (255, 165, 0)),
        (26, "Left-Accumbens-area", (255, 165, 0)),
        (28, "Left-VentralDC", (165, 42, 42)),
        (30, "Left-vessel", (160, 32, 240)),
        (31, "Left-choroid-plexus", (0, 200, 200)),
        (41, "Right-Cerebral-White-Matter", (245, 245, 245)),
        (42, "Right-Cerebral-Cortex", (205, 62, 78)),
        (43, "Right-Lateral-Ventricle", (120, 18, 134)),
        (44, "Right-Inf-Lat-Vent", (196, 58, 250)),
        (46, "Right-Cerebellum-White-Matter", (220, 248, 164)),
        (47, "Right-Cerebellum-Cortex", (230, 148, 34)),
        (49, "Right-Thalamus", (0, 118, 14)),
        (50, "Right-Caudate", (122, 186, 220)),
        (51, "Right-Putamen", (236, 13, 176)),
        (52, "Right-Pallidum", (13, 48, 255)),
        (53, "Right-Hippocampus", (220, 216, 20)),
        (54, "Right-Amygdala", (103, 255, 255)),
        (57, "Right-Lesion", (255, 165, 0)),
        (58, "Right-Accumbens-area", (255, 165, 0)),
        (60, "Right-VentralDC", (165, 42, 42)),
        (62, "Right-vessel", (160, 32, 240)),
        (63, "Right-choroid-plexus", (0, 200, 221)),
        (72, "5th-Ventricle", (120, 190, 150)),
        (77, "WM-hypointensities", (200, 70, 255)),
        (85, "Optic-Chiasm", (234, 169, 30)),
    )
}


# The Desikan-Killiany cortical parcels as FreeSurfer numbers them in aparc+aseg: ctx-lh-NAME = 1000 + n,
# ctx-rh-NAME = 2000 + n (the same colour), from the same FreeSurferColorLUT.txt (n = 4, corpuscallosum,
# is in the LUT but no DK parcellation labels it). Data rows, alike in shape: the duplicates report pairs its lines.
DK_CORTEX: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("bankssts", (25, 100, 40)), 2: ("caudalanteriorcingulate", (125, 100, 160)),
    3: ("caudalmiddlefrontal", (100, 25, 0)), 5: ("cuneus", (220, 20, 100)), 6: ("entorhinal", (220, 20, 10)),
    7: ("fusiform", (180, 220, 140)), 8: ("inferiorparietal", (220, 60, 220)), 9: ("inferiortemporal", (180, 40, 120)),
    10: ("isthmuscingulate", (140, 20, 140)), 11: ("lateraloccipital", (20, 30, 140)),
    12: ("lateralorbitofrontal", (35, 75, 50)), 13: ("lingual", (225, 140, 140)),
    14: ("medialorbitofrontal", (200, 35, 75)), 15: ("middletemporal", (160, 100, 50)),
    16: ("parahippocampal", (20, 220, 60)), 17: ("paracentral", (60, 220, 60)), 18: ("parsopercularis", (220, 180, 140)),
    19: ("parsorbitalis", (20, 100, 50)), 20: ("parstriangularis", (220, 60, 20)), 21: ("pericalcarine", (120, 100, 60)),
    22: ("postcentral", (220, 20, 20)), 23: ("posteriorcingulate", (220, 180, 220)), 24: ("precentral", (60, 20, 220)),
    25: ("precuneus", (160, 140, 180)), 26: ("rostralanteriorcingulate", (80, 20, 140)),
    27: ("rostralmiddlefrontal", (75, 50, 125)), 28: ("superiorfrontal", (20, 220, 160)),
    29: ("superiorparietal", (20, 180, 140)), 30: ("superiortemporal", (140, 220, 220)),
    31: ("supramarginal", (80, 160, 20)), 32: ("frontalpole", (100, 0, 100)), 33: ("temporalpole", (70, 70, 70)),
    34: ("transversetemporal", (150, 150, 200)), 35: ("insula", (255, 192, 32)),
}
#: the left / right offsets of the DK cortical codes
DK_LEFT, DK_RIGHT = 1000, 2000

def aseg_tissue(labels: np.ndarray) -> np.ndarray:
    """FreeSurfer parcellation codes as aseg tissue: cortical parcels (1000-1999 left, 2000-2999 right,
    as in aparc+aseg, aparc.DKTatlas+aseg, aparc.a2005s+aseg) -> cerebral cortex 3 / 42, white-matter
    parcels (3000-3999, 4000-4999, as in wmparc) -> cerebral white matter 2 / 41; other labels kept."""
    labels = np.asarray(labels)
    tissue = np.select([(labels >= 1000) & (labels < 2000), (labels >= 2000) & (labels < 3000),
                        (labels >= 3000) & (labels < 4000), (labels >= 4000) & (labels < 5000)], [3, 42, 2, 41], labels)
    return tissue.astype(labels.dtype)


#: FreeSurfer's names and colours of every label of an aparc+aseg (DK) or aseg segmentation
FREESURFER: dict[int, LabelInfo] = ASEG | {
    offset + n: LabelInfo(f"ctx-{side}-{name}", colour)
    for side, offset in (("lh", DK_LEFT), ("rh", DK_RIGHT))
    for n, (name, colour) in DK_CORTEX.items()
}


def read_lut(path: str | os.PathLike) -> dict[int, LabelInfo]:
    """A colour table from a FreeSurfer LUT file or a BIDS ``dseg.tsv``; label 0 is dropped."""
    path = Path(path)
    if not path.is_file():
        raise AtlasregError(f"{path}: no such colour table")
    text = path.read_text(errors="replace")
    first = next((line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    table = _read_dseg_tsv(path, text) if first.split("\t")[0].strip() == "index" else _read_freesurfer(path, text)
    table.pop(0, None)
    if not table:
        raise AtlasregError(f"{path}: no labels in this colour table")
    return table


def _read_freesurfer(path: Path, text: str) -> dict[int, LabelInfo]:
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            label = int(fields[0])
            colour = tuple(int(v) for v in fields[2:5]) if len(fields) >= 5 else None
        except ValueError:
            raise AtlasregError(f"{path}:{number}: expected 'ID NAME R G B A' (FreeSurfer LUT) or a dseg.tsv with an index column") from None
        if len(fields) < 2:
            raise AtlasregError(f"{path}:{number}: label {label} has no name")
        _refuse_duplicate(path, table, label, fields[1])
        table[label] = LabelInfo(fields[1], colour)  # type: ignore[arg-type]
    return table


def _read_dseg_tsv(path: Path, text: str) -> dict[int, LabelInfo]:
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    if not rows or "name" not in rows[0]:
        raise AtlasregError(f"{path}: a dseg.tsv needs the columns index and name")
    table = {}
    for row in rows:
        try:
            label = int(row["index"])
            colour = row.get("color") or "n/a"
            rgb = None if colour == "n/a" else tuple(int(colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            raise AtlasregError(f"{path}: bad row {row} (index must be an integer, color #RRGGBB or n/a)") from None
        _refuse_duplicate(path, table, label, row["name"])
        table[label] = LabelInfo(row["name"], rgb)  # type: ignore[arg-type]
    return table


def _refuse_duplicate(path: Path, table: Mapping[int, LabelInfo], label: int, name: str) -> None:
    """A label listed twice has two names: which one is meant cannot be known."""
    if label in table:
        raise AtlasregError(f"{path}: label {label} is listed twice (as {table[label].name!r} and as {name!r}); keep one")


def label_table(labels: Iterable[int], known: Mapping[int, LabelInfo] | None = None) -> dict[int, LabelInfo]:
    """Names (and colours) for the non-zero ``labels``: from ``known`` (a built-in atlas's names or a
    user's table) when given, else FreeSurfer's names if every label is a FreeSurfer aseg or
    aparc+aseg (DK) label; ``label-N`` where no name is known."""
    values = sorted({int(v) for v in labels} - {0})
    table = known if known else FREESURFER if set(values) <= set(FREESURFER) else {}
    return {v: table.get(v) or LabelInfo(f"label-{v}") for v in values}


def tsv_beside(label_map: str | os.PathLike) -> Path:
    """Where a label map's names travel: the BIDS ``dseg.tsv`` beside it, its name with ``.tsv``
    for ``.nii.gz`` / ``.nii`` (``sub-01_dseg.nii.gz`` -> ``sub-01_dseg.tsv``, ``out.nii.gz`` -> ``out.tsv``)."""
    path = Path(label_map)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    return path.with_name(stem + ".tsv")


def names_beside(label_map: object) -> dict[int, LabelInfo] | None:
    """The names in the ``dseg.tsv`` beside ``label_map`` (a path; anything else has none), or None."""
    if not isinstance(label_map, (str, os.PathLike)):
        return None
    sidecar = tsv_beside(label_map)
    return read_lut(sidecar) if sidecar.is_file() else None


def write_dseg_tsv(table: Mapping[int, LabelInfo], path: str | os.PathLike) -> Path:
    """A BIDS ``dseg.tsv``: index, name, color (#rrggbb or n/a), one row per label, written atomically."""
    from .io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "name", "color"])
            for label, info in sorted(table.items()):
                writer.writerow([label, info.name, info.hex_colour])
    return path
