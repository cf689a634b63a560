"""Readers for brain-MRI registration datasets, and the paper's preprocessing.

Each reader takes the folder a public release unpacks to and returns a :class:`Dataset`: the
subjects (image and label-map paths), the evaluation protocol that makes Dice numbers comparable
with the literature, and the train/test split the contrastive-registration paper used. Readers
only look at file names; volumes are read on demand with :func:`load_image` / :func:`load_labels`,
which also read the Analyze ``.img/.hdr`` pairs LPBA40 ships as (``atlasreg.io`` reads NIfTI only).

    ds = lpba40("~/data/LPBA40")
    for atlas, target in ds.pairs("test", atlas="S31"):
        moving = preprocess(load_image(atlas))
"""

from __future__ import annotations

import csv
import glob
import itertools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import nibabel as nib
import numpy as np

from . import io
from .errors import AtlasregError
from .hookspecs import hookimpl
from .protocols import get_protocol
from .spatial import crop_or_pad, reorient, resample_to_spacing
from .volume import Volume, image, label_map, zscore as standardise

PathLike = str | os.PathLike

MNI_2MM_SHAPE = (91, 109, 91)  # the MNI152 grid at 2 mm: the paper's input shape for MNI-space data (Mindboggle-101)

ANALYZE_SUFFIXES = (".img", ".img.gz", ".hdr")


@dataclass(frozen=True)
class Subject:
    """One scan: its intensity image and, where the dataset has one, its manual label map."""

    id: str
    image: Path
    labels: Path | None


@dataclass(frozen=True)
class Dataset:
    """Subjects in a fixed order, the protocol to score them with, and named splits of subject ids."""

    # (a list of typed fields like registry.MethodInfo's: alike in shape only, the duplicates report lists the pair)
    name: str
    root: Path
    subjects: tuple[Subject, ...]
    protocol: str
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        get_protocol(self.protocol)
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "subjects", tuple(self.subjects))
        ids = self.ids
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise AtlasregError(f"{self.name}: duplicate subject ids {', '.join(duplicates)}")
        known = set(ids)
        for split, members in self.splits.items():
            unknown = [i for i in members if i not in known]
            if unknown:
                raise AtlasregError(f"{self.name}: split {split!r} names unknown subjects {', '.join(unknown)}")
        object.__setattr__(self, "splits", MappingProxyType({k: tuple(v) for k, v in self.splits.items()}))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subjects)

    def subject(self, id: str) -> Subject:
        """The subject called ``id``."""
        for s in self.subjects:
            if s.id == id:
                return s
        raise AtlasregError(f"{self.name}: no subject {id!r}")

    def split(self, name: str) -> tuple[Subject, ...]:
        """The subjects of split ``name``, in split order."""
        if name not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise AtlasregError(f"{self.name}: no split {name!r}; splits: {known}")
        return tuple(self.subject(i) for i in self.splits[name])

    def pairs(self, split: str | None = None, atlas: str | None = None) -> list[tuple[Subject, Subject]]:
        """(moving, fixed) pairs among ``split`` (default: all subjects).

        With ``atlas``: the atlas (any subject of the dataset) to every other subject of the pool,
        as in atlas-based segmentation. Without: every ordered pair of distinct subjects.
        """
        pool = self.split(split) if split is not None else self.subjects
        if atlas is not None:
            moving = self.subject(atlas)
            return [(moving, s) for s in pool if s.id != atlas]
        return list(itertools.permutations(pool, 2))


# --- reading volumes -------------------------------------------------------------------------


def load_image(subject: Subject | PathLike) -> Volume:
    """A subject's (or a file's) intensity image as float32, from NIfTI or Analyze."""
    return _read(subject.image if isinstance(subject, Subject) else Path(subject), labels=False)


def load_labels(subject: Subject | PathLike) -> Volume:
    """A subject's (or a file's) label map as int32, from NIfTI or Analyze."""
    if isinstance(subject, Subject):
        if subject.labels is None:
            raise AtlasregError(f"subject {subject.id} has no label map")
        return _read(subject.labels, labels=True)
    return _read(Path(subject), labels=True)


def _read(path: Path, labels: bool) -> Volume:
    if path.name.endswith(io.NIFTI_SUFFIXES):
        return io.load(path, labels=labels)
    if path.name.endswith(ANALYZE_SUFFIXES):
        return _read_analyze(path, labels)
    raise AtlasregError(f"{path}: expected NIfTI (.nii, .nii.gz) or Analyze (.img, .img.gz, .hdr)")


def _analyze_stem(path: Path) -> str:
    """``x.img``, ``x.img.gz`` or ``x.hdr`` -> ``x``."""
    name = path.name
    return name[: -len(".img.gz")] if name.endswith(".img.gz") else name[: -len(".img")]


def _read_analyze(path: Path, labels: bool) -> Volume:
    """An Analyze 7.5 (or SPM / NIfTI pair) volume; the data file may be gzipped (``.img.gz``).

    nibabel cannot open ``.img.gz`` beside a plain ``.hdr`` by name, so the header picks the
    image class exactly as ``nib.load`` would and the data file is then handed over explicitly.
    Analyze stores no orientation: the affine is nibabel's default (x flipped, i.e. LAS).
    """
    stem = _analyze_stem(path)
    header = path.with_name(stem + ".hdr")
    data = _first_file([path.parent], stem, (".img", ".img.gz"))
    if not header.is_file() or data is None:
        missing = header.name if not header.is_file() else f"{stem}.img (or .img.gz)"
        raise AtlasregError(f"{path}: Analyze volume lacks {missing}")
    try:
        klass = type(nib.load(str(header)))
        file_map = klass.filespec_to_file_map(str(header))
        file_map["image"].filename = str(data)
        img = klass.from_file_map(file_map)
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise AtlasregError(f"{path}: not a readable Analyze file ({exc})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise AtlasregError(f"{path}: expected a 3-D volume, got shape {array.shape}")
    try:
        return label_map(array, img.affine) if labels else image(array, img.affine)
    except AtlasregError as exc:
        raise AtlasregError(f"{path}: {exc}") from None


# --- helpers shared by the readers -----------------------------------------------------------


def _folder(root: PathLike) -> Path:
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise AtlasregError(f"{root}: no such folder")
    if not root.is_dir():
        raise AtlasregError(f"{root}: not a folder")
    return root


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _natural(text: str) -> list[str | int]:
    """Sort key that puts S2 before S10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _first_file(folders: list[Path], stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for folder in folders:
        for suffix in suffixes:
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def _volume_file(path: Path, what: str) -> Path:
    """``path`` if its name is a volume's (NIfTI or Analyze); anything else is refused before any work."""
    if not path.name.endswith(io.NIFTI_SUFFIXES + ANALYZE_SUFFIXES):
        raise AtlasregError(f"{what} {path}: not a volume file (expected .nii, .nii.gz, .img, .img.gz or .hdr)")
    return path


def _strip_volume_suffix(name: str) -> str:
    """``S01.nii.gz`` -> ``S01``."""
    for suffix in (".nii.gz", ".img.gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --- LPBA40 ----------------------------------------------------------------------------------

LPBA40_SUFFIXES = (".img", ".img.gz", ".nii.gz", ".nii")
_LPBA40_ID = re.compile(r"S\d{2}")
_LPBA40_FLAT = re.compile(r"(S\d{2})\.delineation\.skullstripped(?:\.img|\.img\.gz|\.nii|\.nii\.gz)")
LPBA40_SPLITS = {"train": tuple(f"S{i:02d}" for i in range(1, 31)), "test": tuple(f"S{i:02d}" for i in range(31, 41))}


def lpba40(root: PathLike) -> Dataset:
    """LONI LPBA40 in delineation space: subjects S01..S40, 56 structures, protocol ``lpba40``.

    Accepted layouts (``root`` may also be the release's ``LPBA40`` folder holding
    ``delineation_space/``):

    * the release: ``S01/S01.delineation.skullstripped.img.gz`` + ``.hdr`` and
      ``S01/S01.delineation.structure.label.img.gz`` + ``.hdr`` (unzipped ``.img`` too);
    * the same per-subject folders holding ``.nii.gz`` / ``.nii`` conversions;
    * the flat layout many papers use: ``S01.delineation.skullstripped.nii.gz`` and
      ``S01.delineation.structure.label.nii.gz`` side by side.

    Whatever subjects are present are read (a subset is fine). Splits: LPBA40 has no official
    one; the paper trains on 30 and tests on 10, given here as the common convention
    ``train`` = S01..S30, ``test`` = S31..S40 (restricted to the subjects present).
    """
    root = _folder(root)
    base = root / "delineation_space" if (root / "delineation_space").is_dir() else root
    ids = {p.name for p in _subfolders(base) if _LPBA40_ID.fullmatch(p.name)}
    ids |= {m.group(1) for p in base.iterdir() if p.is_file() and (m := _LPBA40_FLAT.fullmatch(p.name))}
    if not ids:
        raise AtlasregError(
            f"{root}: not an LPBA40 folder: expected S01/S01.delineation.skullstripped.img (or .img.gz, "
            ".nii.gz) or a flat S01.delineation.skullstripped.nii.gz"
        )
    subjects = tuple(
        Subject(
            id,
            _lpba40_file(base, id, "skullstripped", "image"),
            _lpba40_file(base, id, "structure.label", "label file"),
        )
        for id in sorted(ids)
    )
    splits = {name: tuple(i for i in members if i in ids) for name, members in LPBA40_SPLITS.items()}
    return Dataset("lpba40", root, subjects, "lpba40", splits)


def _lpba40_file(base: Path, id: str, kind: str, role: str) -> Path:
    """Subject ``id``'s ``{id}.delineation.{kind}`` volume, in its own folder or flat in ``base``."""
    stem = f"{id}.delineation.{kind}"
    path = _first_file([base / id, base], stem, LPBA40_SUFFIXES)
    if path is None:
        where = base / id if (base / id).is_dir() else base
        raise AtlasregError(f"{where}: subject {id} lacks its {role} {stem}.img (or .img.gz, .nii.gz)")
    if path.name.endswith((".img", ".img.gz")) and not path.with_name(stem + ".hdr").is_file():
        raise AtlasregError(f"{path}: Analyze volume lacks {stem}.hdr")
    return path


# --- Mindboggle-101 --------------------------------------------------------------------------

MINDBOGGLE_IMAGE = "t1weighted_brain.MNI152.nii.gz"
MINDBOGGLE_LABELS = "labels.DKT31.manual+aseg.MNI152.nii.gz"
MINDBOGGLE_SPLITS = {"train": ("NKI-TRT-20", "NKI-RS-22"), "test": ("OASIS-TRT-20",)}
_MINDBOGGLE_GROUP = re.compile(r"(.+)[-_]\d+")


def mindboggle_group(subject_id: str) -> str:
    """The cohort a Mindboggle-101 subject belongs to: ``NKI-TRT-20-3`` -> ``NKI-TRT-20``."""
    match = _MINDBOGGLE_GROUP.fullmatch(subject_id)
    return match.group(1) if match else subject_id


def mindboggle101(root: PathLike) -> Dataset:
    """Mindboggle-101 in MNI152 space, DKT31 manual labels plus aseg; protocol ``mindboggle101``.

    A subject is any folder holding ``t1weighted_brain.MNI152.nii.gz``, directly under ``root``
    or one level down, so both the release's cohort folders (``NKI-TRT-20_volumes/NKI-TRT-20-1/``,
    ``Extra-18_volumes/Colin27-1/``) and a flat folder of subjects work. The release names
    subjects with a hyphen (``OASIS-TRT-20-1``); an underscore (``OASIS-TRT-20_1``) is accepted
    too. The subject id is the folder name. Splits (the paper's): ``train`` = NKI-TRT-20 +
    NKI-RS-22 (42 subjects), ``test`` = OASIS-TRT-20 (20 subjects).
    """
    root = _folder(root)
    folders = _subfolders(root)
    candidates = folders + [sub for folder in folders for sub in _subfolders(folder)]
    found: dict[str, Path] = {}
    for folder in candidates:
        if not (folder / MINDBOGGLE_IMAGE).is_file():
            continue
        if folder.name in found:
            raise AtlasregError(f"{root}: subject {folder.name} found twice: {found[folder.name]} and {folder}")
        if not (folder / MINDBOGGLE_LABELS).is_file():
            raise AtlasregError(f"{folder}: subject {folder.name} lacks its label file {MINDBOGGLE_LABELS}")
        found[folder.name] = folder
    if not found:
        raise AtlasregError(
            f"{root}: not a Mindboggle-101 folder: expected <subject>/{MINDBOGGLE_IMAGE} "
            f"or <cohort>_volumes/<subject>/{MINDBOGGLE_IMAGE} (e.g. NKI-TRT-20_volumes/NKI-TRT-20-1)"
        )
    ids = sorted(found, key=_natural)
    subjects = tuple(Subject(i, found[i] / MINDBOGGLE_IMAGE, found[i] / MINDBOGGLE_LABELS) for i in ids)
    splits = {
        split: tuple(i for i in ids if mindboggle_group(i) in cohorts) for split, cohorts in MINDBOGGLE_SPLITS.items()
    }
    return Dataset("mindboggle101", root, subjects, "mindboggle101", splits)


# --- OASIS (neurite / Learn2Reg) -------------------------------------------------------------

OASIS_IMAGE = "aligned_norm.nii.gz"
OASIS_SEGS = {"seg35": "aligned_seg35.nii.gz", "seg4": "aligned_seg4.nii.gz"}
_OASIS_ID = re.compile(r"OASIS_OAS1_\d{4}_MR\d+")


def oasis(root: PathLike, seg: str = "seg35") -> Dataset:
    """neurite-OASIS (the OASIS-1 preprocessing behind Learn2Reg): ``OASIS_OAS1_0001_MR1/aligned_norm.nii.gz``.

    ``seg="seg35"`` reads ``aligned_seg35.nii.gz`` (35 FreeSurfer structures renumbered 1..35),
    ``seg="seg4"`` reads ``aligned_seg4.nii.gz`` (4 tissue classes). Protocol ``labels`` (every
    label present). No splits: Learn2Reg's train/validation division is not reproduced here
    because its exact subject ranges could not be confirmed; define one with ``Dataset(...)``
    or a CSV ``split`` column if needed. Learn2Reg's own ``imagesTr/labelsTr`` repackaging can be
    read with :func:`from_globs`.
    """
    if seg not in OASIS_SEGS:
        raise AtlasregError(f"OASIS segmentation {seg!r}: choose one of {', '.join(OASIS_SEGS)}")
    root = _folder(root)
    folders = [p for p in _subfolders(root) if _OASIS_ID.fullmatch(p.name)]
    if not folders:
        raise AtlasregError(f"{root}: not a neurite-OASIS folder: expected OASIS_OAS1_0001_MR1/{OASIS_IMAGE}")
    subjects = []
    for folder in folders:
        for role, name in (("image", OASIS_IMAGE), ("label file", OASIS_SEGS[seg])):
            if not (folder / name).is_file():
                raise AtlasregError(f"{folder}: subject {folder.name} lacks its {role} {name}")
        subjects.append(Subject(folder.name, folder / OASIS_IMAGE, folder / OASIS_SEGS[seg]))
    return Dataset("oasis", root, tuple(subjects), "labels")


# --- any folder: glob patterns or a CSV ------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex equivalent to a glob pattern, each wildcard a capture group."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:(.*)/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append("(.*)")
            i += 2
        elif pattern[i] == "*":
            out.append("([^/]*)")
            i += 1
        elif pattern[i] == "?":
            out.append("([^/])")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            body = "^" + body[1:] if body.startswith("!") else "\\" + body if body.startswith("^") else body
            out.append(f"([{body}])")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _glob_ids(pattern: str, root: Path) -> dict[str, Path]:
    """Files matching ``pattern`` (relative to ``root``) keyed by subject id.

    The id is what the wildcards matched (repeats dropped, joined by ``_``), so
    ``sub-*/anat/sub-*_T1w.nii.gz`` gives ``01`` for ``sub-01/anat/sub-01_T1w.nii.gz``.
    """
    regex = _glob_regex(pattern)
    found: dict[str, Path] = {}
    for match in glob.glob(pattern, root_dir=root, recursive=True):
        path = root / match
        if not path.is_file():
            continue
        matched = regex.fullmatch(match)
        parts = dict.fromkeys(g for g in (matched.groups() if matched else ()) if g)
        id = "_".join(parts) or _strip_volume_suffix(path.name)
        if id in found:
            raise AtlasregError(f"{pattern!r}: {found[id]} and {path} both give subject id {id!r}")
        found[id] = _volume_file(path, f"{pattern!r} matches")
    return found


def from_globs(
    images: str,
    labels: str | None = None,
    root: PathLike | None = None,
    *,
    name: str = "folder",
    protocol: str = "labels",
) -> Dataset:
    """Image/label pairs matched by glob patterns relative to ``root`` (default: the current folder).

    Each file's subject id is the text its pattern's wildcards matched. Images and label maps
    are paired in sorted id order; the counts must be equal and the paired ids identical, so a
    missing or extra file can never shift the pairing silently.
    """
    root = _folder(root if root is not None else Path.cwd())
    image_files = _glob_ids(images, root)
    if not image_files:
        raise AtlasregError(f"{images!r} matches no files under {root}")
    ids = sorted(image_files, key=_natural)
    label_files: dict[str, Path] = {}
    if labels is not None:
        label_files = _glob_ids(labels, root)
        if len(label_files) != len(image_files):
            raise AtlasregError(
                f"{images!r} matches {len(image_files)} images but {labels!r} matches {len(label_files)} label maps"
            )
        for image_id, label_id in zip(ids, sorted(label_files, key=_natural)):
            if image_id != label_id:
                raise AtlasregError(
                    f"image {image_files[image_id].name} (id {image_id!r}) pairs with label map "
                    f"{label_files[label_id].name} (id {label_id!r}): "
                    "make both patterns' wildcards match the subject id"
                )
    subjects = tuple(Subject(i, image_files[i], label_files.get(i)) for i in ids)
    return Dataset(name, root, subjects, protocol)


def from_csv(path: PathLike, *, name: str | None = None, protocol: str = "labels") -> Dataset:
    """Subjects listed in a CSV with columns ``image,labels[,id][,split]``.

    Relative paths are resolved against the CSV's folder; an empty ``labels`` cell means no label
    map; ``id`` defaults to the image file name without its extension; a non-empty ``split`` cell
    puts the subject in that split.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise AtlasregError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as exc:  # binary, or not CSV
        raise AtlasregError(f"{path}: not a CSV text file ({type(exc).__name__})") from None
    missing = [c for c in ("image", "labels") if c not in columns]
    if not rows or missing:
        raise AtlasregError(f"{path}: expected a header row image,labels[,id][,split] and at least one subject row")
    subjects, splits = [], {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        files = {}
        for column in ("image", "labels"):
            if not row[column]:
                files[column] = None
                continue
            file = path.parent / Path(row[column]).expanduser()
            if not file.is_file():
                reason = ("is a broken symlink or a symlink loop" if file.is_symlink() else
                          "is not a file" if file.exists() else "does not exist")
                raise AtlasregError(f"{path}, line {line}: {column} file {file} {reason}")
            files[column] = _volume_file(file, f"{path}, line {line}: {column} file")
        if files["image"] is None:
            raise AtlasregError(f"{path}, line {line}: empty image cell")
        id = row.get("id") or _strip_volume_suffix(files["image"].name)
        subjects.append(Subject(id, files["image"], files["labels"]))
        if row.get("split"):
            splits.setdefault(row["split"], []).append(id)
    return Dataset(name or path.stem, path.parent, tuple(subjects), protocol, splits)


@dataclass(frozen=True)
class DatasetReader:
    """A kind of dataset ``open_dataset`` reads (atlasreg's own or a plugin's, hook
    ``atlasreg_dataset_readers``): ``read(root, **options)`` gives the :class:`Dataset` at ``root``."""

    name: str
    read: Callable[..., Dataset] = field(compare=False)
    description: str = ""


READERS: dict[str, DatasetReader] = {
    "lpba40": DatasetReader("lpba40", lpba40, "LONI LPBA40 (56 labels, 7 regions)"),
    "mindboggle101": DatasetReader("mindboggle101", mindboggle101, "Mindboggle-101 (DKT31 cortical labels)"),
    "oasis": DatasetReader("oasis", oasis, "OASIS, as prepared by neurite-oasis (seg4 / seg35)"),
    "csv": DatasetReader("csv", from_csv, "a CSV listing image,labels[,id][,split]"),
}


@hookimpl
def atlasreg_dataset_readers() -> list[DatasetReader]:
    """atlasreg's own dataset readers, declared like a plugin's."""
    return list(READERS.values())


def dataset_readers() -> dict[str, DatasetReader]:
    """Every dataset reader by name: atlasreg's own (:data:`READERS`) and those plugins declare."""
    from .registry import registry

    return registry().declared("atlasreg_dataset_readers", DatasetReader, sys.modules[__name__])


def open_dataset(kind: str, root: PathLike, **options) -> Dataset:
    """The dataset of ``kind`` (lpba40, mindboggle101, oasis, csv or a plugin's) at ``root``; ``options`` go to the reader."""
    readers = dataset_readers()
    try:
        reader = readers[kind.lower()]
    except (KeyError, AttributeError):
        raise AtlasregError(f"unknown dataset kind {kind!r}; known: {', '.join(readers)}") from None
    return reader.read(root, **options)


# --- preprocessing ---------------------------------------------------------------------------


def preprocess(
    volume: Volume, spacing: float = 2.0, shape: tuple[int, int, int] | None = None, zscore: bool = True
) -> Volume:
    """The paper's preprocessing: RAS orientation, isotropic ``spacing`` mm, optional crop/pad, z-score.

    Label maps are resampled by nearest neighbour and never rescaled. Images are z-scored with
    their foreground's statistics on the output grid (``atlasreg.volume.zscore``). Use
    ``shape=MNI_2MM_SHAPE`` for MNI data at 2 mm.
    """
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise AtlasregError(f"shape must be three positive integers, got {shape}")
    out = resample_to_spacing(reorient(volume, "RAS"), spacing)
    if shape is not None:
        out = crop_or_pad(out, shape)
    if zscore and not out.is_labels:
        out = standardise(out)
    return out
