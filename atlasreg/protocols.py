"""Evaluation protocols as data: which labels are scored, how they group, what gets averaged.

Keeping protocols declarative lets every backend, benchmark and the CLI report numbers that are
comparable with the literature (VoxelMorph/SynthMorph for aseg, the contrastive-registration
paper's Tables 1 and 2 for LPBA40 and MindBoggle101) without restating label lists.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

import numpy as np

from .errors import AtlasregError
from .hookspecs import hookimpl
from .lut import DK_CORTEX, DK_LEFT, DK_RIGHT

MeanOver = Literal["labels", "regions"]


@dataclass(frozen=True)
class Protocol:
    """A named scoring rule.

    ``labels`` are scored one by one (``None``: every non-zero label present in the truth);
    each region is scored as the union of its labels; ``mean_over`` says which of the two the
    headline mean Dice averages.
    """

    name: str
    labels: tuple[int, ...] | None
    regions: Mapping[str, tuple[int, ...]] = field(hash=False)
    mean_over: MeanOver
    description: str

    def __post_init__(self) -> None:
        if self.mean_over not in ("labels", "regions"):
            raise AtlasregError(f"protocol {self.name}: mean_over must be 'labels' or 'regions'")
        if self.mean_over == "regions" and not self.regions:
            raise AtlasregError(f"protocol {self.name}: mean over regions needs at least one region")
        object.__setattr__(self, "regions", MappingProxyType({k: tuple(v) for k, v in self.regions.items()}))

    def labels_for(self, truth: np.ndarray) -> tuple[int, ...]:
        """The labels to score against ``truth``: the fixed list, or the truth's non-zero labels."""
        if self.labels is not None:
            return self.labels
        present = np.unique(truth)
        return tuple(int(v) for v in present[present != 0])


def _union(regions: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sorted({label for labels in regions.values() for label in labels}))


def _span(first: int, last: int) -> tuple[int, ...]:
    """Inclusive label range."""
    return tuple(range(first, last + 1))


def _bilateral(numbers: tuple[int, ...]) -> tuple[int, ...]:
    """DKT cortical numbers n -> left (1000 + n) and right (2000 + n) labels."""
    return tuple(sorted([1000 + n for n in numbers] + [2000 + n for n in numbers]))


ASEG_REGIONS: dict[str, tuple[int, ...]] = {
    "cerebral white matter": (2, 41),
    "cerebral cortex": (3, 42),
    "lateral ventricle": (4, 43),
    "cerebellum white matter": (7, 46),
    "cerebellum cortex": (8, 47),
    "thalamus": (10, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "ventral diencephalon": (28, 60),
    "3rd ventricle": (14,),
    "4th ventricle": (15,),
    "brain stem": (16,),
    "CSF": (24,),
}

LPBA40_REGIONS: dict[str, tuple[int, ...]] = {
    "frontal": _span(21, 34),
    "parietal": _span(41, 50),
    "occipital": _span(61, 68),
    "temporal": _span(81, 92),
    "cingulate": _span(121, 122),
    "putamen": _span(163, 164),
    "hippocampus": _span(165, 166),
}

# DKT31 numbers per lobe (insula, 35, belongs to no lobe and is not scored).
DKT_LOBES: dict[str, tuple[int, ...]] = {
    "frontal": (3, 12, 14, 17, 18, 19, 20, 24, 27, 28),
    "parietal": (8, 22, 25, 29, 31),
    "occipital": (5, 11, 13, 21),
    "temporal": (6, 7, 9, 15, 16, 30, 34),
    "cingulate": (2, 10, 23, 26),
}

MINDBOGGLE101_REGIONS: dict[str, tuple[int, ...]] = {lobe: _bilateral(n) for lobe, n in DKT_LOBES.items()}

# Desikan-Killiany cortical parcels per lobe (the usual grouping; the insula on its own).
DK_LOBES: dict[str, tuple[str, ...]] = {
    "frontal": (
        "superiorfrontal", "rostralmiddlefrontal", "caudalmiddlefrontal", "parsopercularis", "parstriangularis",
        "parsorbitalis", "lateralorbitofrontal", "medialorbitofrontal", "precentral", "paracentral", "frontalpole",
    ),
    "parietal": ("superiorparietal", "inferiorparietal", "supramarginal", "postcentral", "precuneus"),
    "temporal": (
        "superiortemporal", "middletemporal", "inferiortemporal", "bankssts", "fusiform", "transversetemporal",
        "entorhinal", "temporalpole", "parahippocampal",
    ),
    "occipital": ("lateraloccipital", "lingual", "cuneus", "pericalcarine"),
    "cingulate": ("rostralanteriorcingulate", "caudalanteriorcingulate", "posteriorcingulate", "isthmuscingulate"),
    "insula": ("insula",),
}
_DK_NUMBER = {name: n for n, (name, _) in DK_CORTEX.items()}

#: aparc+aseg (FreeSurfer's DK segmentation, and atlasreg's built-in atlas): bilateral lobes of the
#: cortical parcels (1000s left, 2000s right) and the subcortical structures (aseg codes)
DK_REGIONS: dict[str, tuple[int, ...]] = {
    **{lobe: tuple(sorted(offset + _DK_NUMBER[name] for name in names for offset in (DK_LEFT, DK_RIGHT)))
       for lobe, names in DK_LOBES.items()},
    **{name: ASEG_REGIONS[name] for name in ("thalamus", "caudate", "putamen", "pallidum", "hippocampus", "amygdala")},
    "accumbens": (26, 58),
}

#: atlasreg's own protocols (plugins add theirs: :func:`all_protocols`). One declaration each: alike in
#: shape by design (data, not code), so the duplicates report lists them.
PROTOCOLS: dict[str, Protocol] = {
    "aseg": Protocol(
        name="aseg",
        labels=_union(ASEG_REGIONS),
        regions=ASEG_REGIONS,
        mean_over="labels",
        description="28 FreeSurfer aseg structures; mean Dice over labels (VoxelMorph/SynthMorph convention)",
    ),
    "lpba40": Protocol(
        name="lpba40",
        labels=_union(LPBA40_REGIONS),
        regions=LPBA40_REGIONS,
        mean_over="regions",
        description="LPBA40 labels grouped into 7 regions; mean Dice over regions (paper Table 1 AVG)",
    ),
    "mindboggle101": Protocol(
        name="mindboggle101",
        labels=_union(MINDBOGGLE101_REGIONS),
        regions=MINDBOGGLE101_REGIONS,
        mean_over="regions",
        description="DKT31 cortical labels grouped into 5 bilateral lobes; mean Dice over lobes (paper Table 2 AVG)",
    ),
    "dk": Protocol(
        name="dk",
        labels=tuple(sorted({*_union(DK_REGIONS), 16})),
        regions=DK_REGIONS,
        mean_over="labels",
        description="the 83 Desikan-Killiany labels (68 cortical, 14 subcortical, brain stem) in FreeSurfer's aparc+aseg "
                    "codes, as the built-in atlas writes them (a FreeSurfer aparc+aseg's other labels are not scored); "
                    "mean Dice over labels; regions: bilateral lobes and subcortical structures",
    ),
    "labels": Protocol(
        name="labels",
        labels=None,
        regions={},
        mean_over="labels",
        description="every non-zero label present in the truth; mean Dice over labels",
    ),
}


@hookimpl
def atlasreg_protocols() -> list[Protocol]:
    """atlasreg's own protocols, declared like a plugin's."""
    return list(PROTOCOLS.values())


def all_protocols() -> dict[str, Protocol]:
    """Every protocol by name: atlasreg's own (:data:`PROTOCOLS`) and those plugins declare."""
    from .registry import registry

    return registry().declared("atlasreg_protocols", Protocol, sys.modules[__name__])


def get_protocol(protocol: str | Protocol) -> Protocol:
    """The protocol called ``protocol`` (a Protocol is its own answer); AtlasregError naming the known ones otherwise."""
    if isinstance(protocol, Protocol):
        return protocol
    known = all_protocols()
    try:
        return known[protocol]
    except (KeyError, TypeError):
        raise AtlasregError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(known))}") from None
