"""BIDS in, BIDS derivatives out (``atlasreg bids BIDS_DIR OUTPUT_DIR participant|group``).

T1-weighted images are found with pybids. Per image, in the BIDS-Apps convention::

    OUTPUT_DIR/dataset_description.json              GeneratedBy: atlasreg version, backend, options, model checksum
    OUTPUT_DIR/desc-<desc>_dseg.tsv                  index, name, color of every atlas label
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<desc>_dseg.nii.gz   the labels (+ _dseg.json: the record)
    OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<desc>_volumes.tsv   label, name, voxels, volume_mm3
    OUTPUT_DIR/sub-X/figures/sub-X[_ses-Y]_desc-<desc>_dseg.png           QC figure
    OUTPUT_DIR/index.html                            QC index of the run

Other entities of the source name (acq-, run-, ...) are kept. The ``group`` level gathers every
subject's volumes into ``OUTPUT_DIR/desc-<desc>_volumes.tsv`` and rewrites the index for all of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ._version import __version__
from .errors import AtlasregError
from .io import check_output
from .lut import label_table, write_dseg_tsv
from .pipeline import (Atlas, SegmentSettings, SubjectJob, check_study_outputs, claim_settings, made_by, method_label, read_json,
                       segment_subjects, settings_digest, study_atlases)
from .registry import get_backend

BIDS_VERSION = "1.9.0"
GROUP_COLUMNS = ("participant_id", "session_id", "label", "name", "voxels", "volume_mm3")


def desc_for(builtin_atlas: str | None, atlases: Sequence[Atlas] | None) -> str:
    """The ``desc-`` value naming the outputs: the built-in atlas's name (alphanumerics only) or ``atlas``."""
    if atlases:
        return "atlas"
    from .atlases import DEFAULT_ATLAS

    return re.sub(r"[^A-Za-z0-9]", "", builtin_atlas or DEFAULT_ATLAS)


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


def derivative_jobs(images: Sequence[Path], out_dir: Path, desc: str) -> list[SubjectJob]:
    """Where each image's outputs go, named after it as BIDS derivatives."""
    jobs = []
    for image in images:
        prefix = re.sub(r"_T1w\.nii(\.gz)?$", "", image.name)
        subject = re.match(r"sub-[A-Za-z0-9]+", prefix)
        if subject is None:
            raise AtlasregError(f"{image}: not a BIDS file name (no sub- entity)")
        session = re.search(r"_(ses-[A-Za-z0-9]+)", prefix)
        anat = out_dir / subject.group(0) / (session.group(1) if session else "") / "anat"
        stem = f"{prefix}_desc-{desc}"
        jobs.append(SubjectJob(prefix, image, anat / f"{stem}_dseg.nii.gz", anat / f"{stem}_volumes.tsv",
                               out_dir / subject.group(0) / "figures" / f"{stem}_dseg.png", anat / f"{stem}_dseg.json"))
    return jobs


def generated_by(settings: SegmentSettings, atlases: Sequence[Atlas] | None, builtin_atlas: str | None) -> dict[str, Any]:
    """The ``GeneratedBy`` entry: what made these derivatives, enough to make them again."""
    return {"Name": "atlasreg", "Version": __version__,
            "Description": "registration-based segmentation: atlases registered to each T1w image, labels carried across and fused",
            **made_by(settings, atlases, builtin_atlas)}


def claim_output(out_dir: Path, description: dict[str, Any], redo: bool = False) -> None:
    """Write ``dataset_description.json``, or check that an existing one was made with the same
    settings (``redo``: rewrite it for these settings instead of refusing)."""
    path = out_dir / "dataset_description.json"
    existing = read_json(path)
    if existing is not None:
        generated = existing.get("GeneratedBy") if isinstance(existing, dict) else None
        if not (isinstance(generated, list) and generated and isinstance(generated[0], dict)):
            raise AtlasregError(f"{path}: not a dataset description atlasreg wrote (no GeneratedBy list of objects); "
                                "use another output folder")
        existing = generated[0]
    claim_settings(path, existing, description["GeneratedBy"][0], redo,
                   write=lambda tmp: tmp.write_text(json.dumps(description, indent=2) + "\n"))


def run_participant(
    bids_dir: str | Path,
    out_dir: str | Path,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
    atlases: Sequence[Atlas] | None = None,
    builtin_atlas: str | None = None,
    backend: str = "ants",
    backend_options: dict[str, Any] | None = None,
    fusion: str = "majority",
    fusion_options: dict[str, Any] | None = None,
    label_interp: str = "nearest",
    label_names=None,
    jobs: int = 1,
    threads: int | None = None,
    client: Any = None,
    progress: bool = False,
    redo: bool = False,
) -> list[dict[str, Any]]:
    """Segment the chosen participants' T1w images into BIDS derivatives; one record per image.

    An OUTPUT_DIR made with other settings is refused, unless ``redo`` (every image made again)."""
    from .qc import write_index

    bids_root, out = Path(bids_dir), check_output(out_dir, suffixes=None, parents=True)
    if out.resolve() == bids_root.resolve():
        raise AtlasregError("OUTPUT_DIR must differ from BIDS_DIR (derivatives go beside the raw data, e.g. BIDS_DIR/derivatives/atlasreg)")
    images = find_t1w(bids_root, participants, sessions)
    desc = desc_for(builtin_atlas, atlases)
    study_jobs = derivative_jobs(images, out, desc)
    check_study_outputs(study_jobs, atlases, [out / "dataset_description.json", out / f"desc-{desc}_dseg.tsv", out / "index.html"])
    pairs, names = study_atlases(atlases, builtin_atlas)
    settings = SegmentSettings(backend, fusion, get_backend(backend).resolve_options(backend_options or {}),
                               dict(fusion_options or {}), label_interp, label_names or names)
    description = {"Name": f"atlasreg segmentation ({desc})", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                   "GeneratedBy": [generated_by(settings, atlases, builtin_atlas)],
                   "SourceDatasets": [{"URL": bids_root.resolve().as_uri()}]}
    out.mkdir(parents=True, exist_ok=True)
    claim_output(out, description, redo)
    settings = replace(settings, digest=settings_digest(description["GeneratedBy"][0]))
    atlas_labels = sorted({int(v) for _, labels in pairs for v in labels.labels()})
    write_dseg_tsv(label_table(atlas_labels, settings.label_names), out / f"desc-{desc}_dseg.tsv")
    records = segment_subjects(study_jobs, pairs, settings, jobs=jobs, threads=threads,
                               client=client, progress=progress, work_dir=out)
    write_index(out / "index.html", records,
                title=f"atlasreg: {bids_root.name}, {len(records)} T1w images, {method_label(backend, settings.backend_options)}")
    return records


def run_group(out_dir: str | Path, participants: Sequence[str] = ()) -> Path:
    """Every finished subject's volumes in one table (``desc-<desc>_volumes.tsv``), and the QC index of all."""
    from .qc import write_index
    from .volumes import read_volumes, write_volumes

    out = Path(out_dir)
    wanted = {p.removeprefix("sub-") for p in participants}
    records = []
    for path in sorted(out.glob("sub-*/**/anat/*_dseg.json")):
        record = json.loads(path.read_text())
        subject = re.match(r"sub-([A-Za-z0-9]+)", path.name)
        if record.get("status") == "ok" and subject and (not wanted or subject.group(1) in wanted):
            stem = path.name[: -len("_dseg.json")]  # paths from where the files are now, not where they were written
            records.append({**record, "labels": str(path.with_name(f"{stem}_dseg.nii.gz")), "record": str(path),
                            "volumes": str(path.with_name(f"{stem}_volumes.tsv")),
                            "figure": str(out / subject.group(0) / "figures" / f"{stem}_dseg.png")})
    if not records:
        raise AtlasregError(f"{out}: no finished participant outputs; run the participant level first")
    descs = {re.search(r"_desc-([A-Za-z0-9]+)_dseg\.json$", r["record"]).group(1) for r in records}
    if len(descs) > 1:
        raise AtlasregError(f"{out}: outputs of several atlases ({', '.join(sorted(descs))}); keep one per folder")
    rows = []
    for record in records:
        name = Path(record["labels"]).name
        session = re.search(r"_ses-([A-Za-z0-9]+)", name)
        participant = re.match(r"sub-([A-Za-z0-9]+)", name).group(1)
        for row in read_volumes(record["volumes"]):
            rows.append({"participant_id": f"sub-{participant}", "session_id": f"ses-{session.group(1)}" if session else "n/a", **row})
    table = write_volumes(rows, out / f"desc-{descs.pop()}_volumes.tsv", GROUP_COLUMNS)
    write_index(out / "index.html", records, title=f"atlasreg: {len(records)} T1w images")
    return table
