"""BIDS in, BIDS derivatives out (``atlasreg bids BIDS_DIR OUTPUT_DIR participant|group``), as BIDS Apps do.

T1-weighted images are found with pybids. The outputs (``<desc>``: the built-in atlas's name, or ``atlas``)::

    OUTPUT_DIR/dataset_description.json   DatasetType derivative; GeneratedBy (Name, Version, Description, CodeURL);
                                          SourceDatasets and DatasetLinks: BIDS_DIR relative to OUTPUT_DIR (its DOI too)
    OUTPUT_DIR/desc-<desc>_dseg.tsv       index, name, color of every atlas label (the lookup table of every dseg)
    OUTPUT_DIR/desc-<desc>_morph.json     data dictionary of the volumes tables (columns, units mm^3), inherited by each
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<desc>_dseg.nii.gz  the labels, on the T1w image's grid
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<desc>_dseg.json    Description, Manual, Sources (bids:raw:...)
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<desc>_morph.tsv    label, name, voxels, volume_mm3
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_from-<atlas>_to-T1w_mode-image_xfm.nii.gz  the registration: pulls
                                          atlas-space images onto the T1w grid (ITK displacement field)
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_from-T1w_to-<atlas>_mode-image_xfm.nii.gz  its inverse, on the atlas grid
    OUTPUT_DIR/sub-X/figures/sub-X[_ses-Y]_desc-<desc>_dseg.png          QC figure (sides marked)
    OUTPUT_DIR/sub-X.html                 the subject's report: command, version, settings, figures, colour legend, volumes
    OUTPUT_DIR/index.html                 QC index of every subject the folder holds (all runs, not this one's alone)
    OUTPUT_DIR/atlasreg_settings.json     the settings that made the folder (a rerun with others is refused)
    OUTPUT_DIR/logs/sub-X[_ses-Y]_desc-<desc>_record.json  each image's run record (paths relative to OUTPUT_DIR)
    OUTPUT_DIR/.bidsignore                what is not BIDS (logs, figures, reports, settings) for the BIDS validator

<atlas> is ``<desc>`` (``atlas1``, ``atlas2``, ... for several -a); the transforms are named with the
``from``/``to``/``mode`` entities and ``xfm`` suffix of BIDS derivatives (as fMRIPrep names its own),
and ``atlasreg apply`` and antsApplyTransforms read them. Other entities of the source name (acq-,
run-, ...) are kept. The ``group`` level gathers every
subject's volumes into ``OUTPUT_DIR/desc-<desc>_morph.tsv`` (with participant_id and session_id) and
rewrites the index and the reports.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._version import __version__
from .errors import AtlasregError
from .io import check_output, write_text
from .lut import LabelInfo, label_table, write_dseg_tsv
from .pipeline import (STUDY_SETTINGS, Atlas, SegmentSettings, SubjectJob, method_label, prepare_study, read_json, read_settings,
                       settings_digest)
from .registry import DEFAULT_BACKEND, DEFAULT_FUSION

BIDS_VERSION = "1.9.0"
GROUP_COLUMNS = ("participant_id", "session_id", "label", "name", "voxels", "volume_mm3")
#: the data dictionary of the volumes tables (BIDS: a JSON object per column; one unit, mm^3, as everywhere)
MORPH_COLUMNS = {
    "participant_id": {"Description": "Participant (group table only)."},
    "session_id": {"Description": "Session, n/a without sessions (group table only)."},
    "label": {"Description": "Label value in the dseg image (the index column of desc-<desc>_dseg.tsv)."},
    "name": {"Description": "Name of the label (the name column of desc-<desc>_dseg.tsv)."},
    "voxels": {"Description": "Voxels of the dseg image with this label.", "Units": "voxel"},
    "volume_mm3": {"Description": "Volume of the label: voxels times the voxel volume from the NIfTI affine.", "Units": "mm^3"},
}
#: what the BIDS validator is to skip: not BIDS files (written to .bidsignore)
NOT_BIDS = ("logs/", "*.html", "sub-*/figures/", STUDY_SETTINGS)
LOGS = "logs"


def desc_for(builtin_atlas: str | None, atlases: Sequence[Atlas] | None) -> str:
    """The ``desc-`` value naming the outputs: the built-in atlas's name (alphanumerics only) or ``atlas``."""
    if atlases:
        return "atlas"
    from .atlases import DEFAULT_ATLAS

    return re.sub(r"[^A-Za-z0-9]", "", builtin_atlas or DEFAULT_ATLAS)


def atlas_spaces(desc: str, atlases: Sequence[Atlas] | None) -> list[str]:
    """The ``from-``/``to-`` label of each atlas's space: the built-in atlas's ``desc``, else ``atlas``
    (``atlas1``, ``atlas2``, ... for several)."""
    if not atlases:
        return [desc]
    return ["atlas"] if len(atlases) == 1 else [f"atlas{index}" for index in range(1, len(atlases) + 1)]


def find_t1w(bids_dir: str | Path, participants: Sequence[str] = (), sessions: Sequence[str] = ()) -> list[Path]:
    """T1w images (``anat/*_T1w.nii[.gz]``) of the chosen participants and sessions (all when empty)."""
    root = Path(bids_dir)
    if not (root / "dataset_description.json").is_file():
        raise AtlasregError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    from bids import BIDSLayout

    try:
        layout = BIDSLayout(str(root), validate=False)
    except Exception as exc:  # pybids raises its own types for malformed datasets
        raise AtlasregError(f"{root}: pybids cannot read this dataset ({type(exc).__name__}: {exc})") from None
    query: dict[str, Any] = {}
    for entity, wanted, available in (("subject", participants, layout.get_subjects()),
                                      ("session", sessions, layout.get_sessions())):
        labels = [w.removeprefix("sub-" if entity == "subject" else "ses-") for w in wanted]
        unknown = sorted(set(labels) - set(available))
        if unknown:
            raise AtlasregError(f"{entity} {', '.join(unknown)} not in {root} (found: {', '.join(sorted(available)) or 'none'})")
        if labels:
            query[entity] = labels
    files = layout.get(suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"], return_type="filename", **query)
    if not files:
        raise AtlasregError(f"{root}: no T1w image found for these participants/sessions")
    return sorted(Path(f) for f in files)


def derivative_jobs(images: Sequence[Path], out_dir: Path, desc: str, spaces: Sequence[str] = ()) -> list[SubjectJob]:
    """Where each image's outputs go, named after it as BIDS derivatives; its run record under ``logs/``;
    per atlas space in ``spaces`` its two transforms, ``<source entities>_from-<space>_to-T1w_mode-image_xfm.nii.gz`` and back."""
    jobs = []
    for image in images:
        prefix = re.sub(r"_T1w\.nii(\.gz)?$", "", image.name)
        subject = re.match(r"sub-[A-Za-z0-9]+", prefix)
        if subject is None:
            raise AtlasregError(f"{image}: not a BIDS file name (no sub- entity)")
        session = re.search(r"_(ses-[A-Za-z0-9]+)", prefix)
        anat = out_dir / subject.group(0) / (session.group(1) if session else "") / "anat"
        stem = f"{prefix}_desc-{desc}"
        transforms = tuple((anat / f"{prefix}_from-{space}_to-T1w_mode-image_xfm.nii.gz",
                            anat / f"{prefix}_from-T1w_to-{space}_mode-image_xfm.nii.gz") for space in spaces)
        jobs.append(SubjectJob(prefix, image, anat / f"{stem}_dseg.nii.gz", anat / f"{stem}_morph.tsv",
                               out_dir / subject.group(0) / "figures" / f"{stem}_dseg.png", out_dir / LOGS / f"{stem}_record.json",
                               root=out_dir, transforms=transforms))
    return jobs


def code_url() -> str | None:
    """Where atlasreg's code is, from the installed package's metadata (a Source, Repository or Homepage URL)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("atlasreg")
    except PackageNotFoundError:
        return None
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [] if ", " in entry)
    return next((urls[k] for k in ("Source", "Repository", "Source Code", "Homepage") if k in urls), None) or meta.get("Home-page")


def generated_by(settings: SegmentSettings, atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> dict[str, Any]:
    """The ``GeneratedBy`` entry, in BIDS' own keys (the settings themselves are in ``atlasreg_settings.json``)."""
    from .atlases import DEFAULT_ATLAS

    source = f"{len(atlases)} atlases" if atlases and len(atlases) > 1 else "1 atlas" if atlases else f"the built-in atlas {builtin_atlas or DEFAULT_ATLAS}"
    entry = {"Name": "atlasreg", "Version": __version__,
             "Description": f"registration-based segmentation: {source} registered to each T1w image "
                            f"({method_label(settings.backend, settings.backend_options)}), labels carried across"
                            + (f" and fused ({settings.fusion})" if atlases and len(atlases) > 1 else "")}
    url = code_url()
    if url:
        entry["CodeURL"] = url
    return entry


def dataset_description(bids_root: Path, out: Path, desc: str, generated: Mapping[str, Any]) -> dict[str, Any]:
    """``dataset_description.json`` of the derivatives: the raw dataset linked by a path relative to
    them (``bids:raw:...`` URIs in each ``Sources``), with its DOI when it declares one."""
    raw = relative_link(bids_root, out)
    source: dict[str, Any] = {"URL": raw}
    declared = read_json(bids_root / "dataset_description.json")
    if isinstance(declared, dict) and isinstance(declared.get("DatasetDOI"), str):
        source["DOI"] = declared["DatasetDOI"]
    return {"Name": f"atlasreg segmentation ({desc})", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [dict(generated)], "SourceDatasets": [source], "DatasetLinks": {"raw": raw}}


def relative_link(path: Path, start: Path) -> str:
    """``path`` relative to ``start``, as a URI path (forward slashes)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def check_description(out: Path) -> None:
    """Refuse an output folder whose ``dataset_description.json`` another tool wrote (never overwritten)."""
    path = out / "dataset_description.json"
    existing = read_json(path)
    if existing is None:
        return
    generated = existing.get("GeneratedBy") if isinstance(existing, dict) else None
    if not (isinstance(generated, list) and generated and isinstance(generated[0], dict) and generated[0].get("Name") == "atlasreg"):
        raise AtlasregError(f"{path}: not a dataset description atlasreg wrote (no GeneratedBy list naming atlasreg); "
                            "use another output folder")


def _write_json(path: Path, content: Any) -> None:
    """Write ``content`` as JSON (atomically), unless the file holds it already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(content, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` (atomically), unless the file holds it already."""
    if not (path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text):
        write_text(path, text)


def dseg_sidecar(record: Mapping[str, Any], bids_root: Path, description: str) -> dict[str, Any]:
    """The BIDS sidecar of a dseg image: what it is, made automatically, from which raw file (a BIDS URI)."""
    return {"Description": description, "Manual": False,
            "Sources": [f"bids:raw:{relative_link(Path(record['target']), bids_root)}"]}


def run_participant(
    bids_dir: str | Path,
    out_dir: str | Path,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
    atlases: Sequence[Atlas] | None = None,
    builtin_atlas: str | None = None,
    backend: str = DEFAULT_BACKEND,
    backend_options: dict[str, Any] | None = None,
    fusion: str = DEFAULT_FUSION,
    fusion_options: dict[str, Any] | None = None,
    label_interp: str = "nearest",
    label_names=None,
    jobs: int = 1,
    threads: int | None = None,
    client: Any = None,
    progress: bool = False,
    redo: bool = False,
    work_dir: str | Path | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Segment the chosen participants' T1w images into BIDS derivatives; one record per image.

    An OUTPUT_DIR made with other settings is refused, unless ``redo`` (every image made again).
    ``work_dir``: scratch space (a local Dask cluster's), default OUTPUT_DIR. ``command``: the
    command line that asked for the run, shown in the reports."""
    bids_root, out = Path(bids_dir), check_output(out_dir, suffixes=None, parents=True)
    work = check_output(work_dir, suffixes=None, parents=True) if work_dir is not None else out
    check_outside_raw_data(bids_root, [out, work])
    images = find_t1w(bids_root, participants, sessions)
    desc = desc_for(builtin_atlas, atlases)
    study_jobs = derivative_jobs(images, out, desc, atlas_spaces(desc, atlases))
    subjects = sorted({re.match(r"sub-[A-Za-z0-9]+", job.id).group(0) for job in study_jobs})
    check_outside_raw_data(bids_root, [path for job in study_jobs for path in job.outputs])
    check_description(out)
    study = prepare_study(out, study_jobs, atlases, builtin_atlas, backend, fusion, backend_options, fusion_options, label_interp,
                          label_names, redo=redo, others=[out / name for name in ("dataset_description.json", f"desc-{desc}_dseg.tsv",
                                                                                  f"desc-{desc}_morph.json", "index.html", ".bidsignore",
                                                                                  *(f"{s}.html" for s in subjects))])
    settings, wanted = study.settings, study.made
    generated = generated_by(settings, atlases, builtin_atlas)
    _write_json(out / "dataset_description.json", dataset_description(bids_root, out, desc, generated))
    _write_text(out / ".bidsignore", "".join(f"{pattern}\n" for pattern in NOT_BIDS))
    _write_json(out / f"desc-{desc}_morph.json", MORPH_COLUMNS)
    atlas_labels = sorted({int(v) for _, labels in study.atlases for v in labels.labels()})
    write_dseg_tsv(label_table(atlas_labels, settings.label_infos), out / f"desc-{desc}_dseg.tsv")
    work.mkdir(parents=True, exist_ok=True)
    records = study.run(study_jobs, jobs=jobs, threads=threads, client=client, progress=progress, work_dir=work)
    for record in records:
        if record["status"] != "failed":
            _write_json(Path(record["labels"]).with_suffix("").with_suffix(".json"), dseg_sidecar(record, bids_root, generated["Description"]))
    provenance = {"Version": __version__, "Command": command or "called from Python (atlasreg.bids.run_participant)", **wanted}
    write_reports(out, desc, folder_records(out, desc, settings.digest, records), settings.label_infos, provenance, subjects)
    return records


def check_outside_raw_data(bids_root: Path, paths: Sequence[Path]) -> None:
    """Refuse, before any work, an output folder or file in the raw dataset at ``bids_root``: it would
    change the raw data, and a rerun's pybids would index it with the inputs. Only a folder of its
    ``derivatives/`` (``BIDS_DIR/derivatives/NAME``, as BIDS Apps write) is allowed. A BIDS_DIR inside
    OUTPUT_DIR is refused only where an output would land in it (BIDS_DIR named ``OUTPUT_DIR/sub-01``)."""
    root = bids_root.resolve()
    for path in paths:
        parts = path.resolve().relative_to(root).parts if path.resolve().is_relative_to(root) else None
        if parts is not None and not (len(parts) >= 2 and parts[0] == "derivatives"):
            raise AtlasregError(f"{path}: would be written into the raw dataset BIDS_DIR ({bids_root}); give an OUTPUT_DIR "
                                f"outside it, or in its derivatives folder (e.g. {bids_root / 'derivatives' / 'atlasreg'})")


def folder_records(out: Path, desc: str, digest: str | None, records: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Every image's record the folder holds for ``desc`` (each run's, not the last one's alone), its
    paths made absolute again, overridden by ``records`` of this run; one made with other settings
    than ``digest`` is listed as such."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((out / LOGS).glob(f"*_desc-{desc}_record.json")):
        record = read_json(path)
        if not (isinstance(record, dict) and record.get("status") == "ok" and isinstance(record.get("id"), str)):
            continue
        paths = {key: str(out / record[key]) for key in ("target", "labels", "volumes", "figure", "record") if isinstance(record.get(key), str)}
        status = "ok" if digest is None or record.get("settings") == digest else "made with other settings"
        found[record["id"]] = {**record, **paths, "status": status}
    for record in records:
        found[record["id"]] = dict(record)
    return [found[key] for key in sorted(found)]


def write_reports(out: Path, desc: str, records: Sequence[Mapping[str, Any]], names: Mapping[int, LabelInfo] | None,
                  provenance: Mapping[str, Any], subjects: Sequence[str] | None = None) -> None:
    """``index.html`` of every record, and ``sub-X.html`` of ``subjects`` (default: all)."""
    from .qc import write_index, write_subject_report

    by_subject: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_subject.setdefault(re.match(r"sub-[A-Za-z0-9]+", record["id"]).group(0), []).append(record)
    for subject in subjects if subjects is not None else sorted(by_subject):
        write_subject_report(out / f"{subject}.html", subject, by_subject.get(subject, []), names, provenance)
    reports = {record["id"]: f"{subject}.html#{record['id']}" for subject, group in by_subject.items() for record in group
               if (out / f"{subject}.html").is_file()}
    write_index(out / "index.html", records, title=f"atlasreg: {len(records)} T1w images ({desc})", provenance=provenance, reports=reports)


def run_group(out_dir: str | Path, participants: Sequence[str] = (), command: str | None = None) -> Path:
    """Every finished subject's volumes in one table (``desc-<desc>_morph.tsv``), the QC index of all and their reports."""
    from .lut import read_lut
    from .morphometry import read_volumes, write_volumes

    out = Path(out_dir)
    wanted = {p.removeprefix("sub-") for p in participants}
    descs = sorted({m.group(1) for p in (out / LOGS).glob("*_record.json") if (m := re.search(r"_desc-([A-Za-z0-9]+)_record\.json$", p.name))})
    if not descs:
        raise AtlasregError(f"{out}: no finished participant outputs; run the participant level first")
    if len(descs) > 1:
        raise AtlasregError(f"{out}: outputs of several atlases ({', '.join(descs)}); keep one per folder")
    desc = descs[0]
    settings = read_settings(out / STUDY_SETTINGS) or {}
    records = [r for r in folder_records(out, desc, settings_digest(settings) if settings else None)
               if not wanted or re.match(r"sub-([A-Za-z0-9]+)", r["id"]).group(1) in wanted]
    if not records:
        raise AtlasregError(f"{out}: no finished participant outputs of these participants; run the participant level first")
    rows = []
    for record in records:
        session = re.search(r"_ses-([A-Za-z0-9]+)", record["id"])
        participant = re.match(r"sub-[A-Za-z0-9]+", record["id"]).group(0)
        for row in read_volumes(record["volumes"]):
            rows.append({"participant_id": participant, "session_id": f"ses-{session.group(1)}" if session else "n/a", **row})
    table = write_volumes(rows, out / f"desc-{desc}_morph.tsv", GROUP_COLUMNS)
    _write_json(out / f"desc-{desc}_morph.json", MORPH_COLUMNS)
    lut = out / f"desc-{desc}_dseg.tsv"
    provenance = {"Version": __version__, "Command": command or "called from Python (atlasreg.bids.run_group)", **settings}
    write_reports(out, desc, records, read_lut(lut) if lut.is_file() else None, provenance)
    return table
