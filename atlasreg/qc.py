"""Quality control a person looks at: per subject a PNG (the target alone and with its labels over
it, three orthogonal slices marked with the subject's sides), per run an HTML index (one row per
subject: thumbnail, volumes, time, backend, status) and, for BIDS derivatives, a report per
subject (``sub-XX.html``: its images, a colour legend with every label's volume). Every page says
which atlasreg made it, with which command and settings; volumes are in mm³ everywhere, as in the
tables. The pages open offline in any browser (relative links, no scripts, inline CSS).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import label_colours, overlay_figure
from .io import write_text
from .lut import LabelInfo
from .volume import Volume


def colour_table(max_label: int, names: Mapping[int, LabelInfo] | None) -> np.ndarray:
    """RGBA per label value: the table's colour where it has one, a fixed random colour otherwise."""
    colours = label_colours(max_label)
    for label, info in (names or {}).items():
        if info.colour and 0 < label <= max_label:
            colours[label, :3] = np.asarray(info.colour) / 255.0
    return colours


def subject_figure(path: Path, image: Volume, labels: Volume, title: str = "", names: Mapping[int, LabelInfo] | None = None) -> Path:
    """Three orthogonal slices through the labelled region: the target, then the labels over it."""
    from .lut import label_table

    colours = colour_table(int(labels.array.max()), names if names is not None else label_table(labels.labels().tolist()))
    return overlay_figure(Path(path), image, labels, {}, title=title, truth_name="labels", colours=colours)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ccc; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img.thumb { width: 540px; border: 1px solid #ddd; }
td.num { text-align: right; white-space: nowrap; }
summary { white-space: nowrap; }
.ok { color: #11772d; font-weight: bold; }
.failed { color: #b00020; font-weight: bold; }
.before { color: #555; font-weight: bold; }
details table td { border: none; padding: 1px 6px; font-size: 90%; }
.error { color: #b00020; max-width: 28em; }
dl.provenance { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 90%; }
dl.provenance dt { font-weight: bold; }
dl.provenance dd { margin: 0; font-family: monospace; white-space: pre-wrap; word-break: break-all; }
span.swatch { display: inline-block; width: 1.2em; height: 1.2em; border: 1px solid #888; vertical-align: middle; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
"""

#: how the slice figures are drawn, said on every page
ORIENTATION_NOTE = ("Slices are in neurological convention: the subject's left (L) on the left of the axial and coronal "
                    "views, posterior (P) on the left of the sagittal one; each view is marked.")


def _link(path: str | None, base: Path) -> str | None:
    """``path`` relative to the index's folder, if the file exists."""
    if not path or not Path(path).is_file():
        return None
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _volumes_cell(record: Mapping[str, Any], base: Path) -> str:
    link = _link(record.get("volumes"), base)
    if not link:
        return "&ndash;"
    from .morphometry import read_volumes

    rows = read_volumes(record["volumes"])
    total = sum(r["volume_mm3"] for r in rows)
    largest = sorted(rows, key=lambda r: -r["volume_mm3"])
    body = "".join(f"<tr><td>{r['label']}</td><td>{html.escape(r['name'])}</td><td class='num'>{r['volume_mm3']:.0f} mm³</td></tr>"
                   for r in largest)
    return (f"<details><summary>{total:.0f} mm³ in {len(rows)} labels</summary><table>{body}</table></details>"
            f"<a href='{html.escape(link)}'>{html.escape(Path(link).name)}</a>")


def provenance_html(provenance: Mapping[str, Any] | None) -> str:
    """What made a page's outputs (version, command, settings), as a definition list; values not text as JSON."""
    if not provenance:
        return ""
    import json

    items = "".join(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(value if isinstance(value, str) else json.dumps(value))}</dd>"
                    for key, value in provenance.items())
    return f"<dl class='provenance'>{items}</dl>"


def write_index(path: Path, records: Sequence[Mapping[str, Any]], title: str = "atlasreg run",
                provenance: Mapping[str, Any] | None = None, reports: Mapping[str, str] | None = None) -> Path:
    """The run's HTML index: one row per subject (records as returned by :func:`atlasreg.segment_many`),
    under what made them (``provenance``: version, command, settings). ``reports``: a record id's
    report page (relative to the index), linked from its row."""
    path = Path(path)
    base = path.parent
    failed = sum(r.get("status") == "failed" for r in records)
    rows = []
    for record in records:
        status = record.get("status", "")
        css = {"ok": "ok", "failed": "failed"}.get(status, "before")
        figure = _link(record.get("figure"), base)
        thumb = f"<a href='{html.escape(figure)}'><img class='thumb' src='{html.escape(figure)}' alt='QC of {html.escape(record['id'])}'></a>" if figure else "&ndash;"
        labels = _link(record.get("labels"), base)
        name = html.escape(record["id"]) + (f"<br><a href='{html.escape(labels)}'>labels</a>" if labels else "")
        report = (reports or {}).get(record["id"])
        if report:
            name += f"<br><a href='{html.escape(report)}'>report</a>"
        error = f"<div class='error'>{html.escape(record.get('error') or '')}</div>" if record.get("error") else ""
        seconds, memory = record.get("seconds"), record.get("peak_rss_mb")
        cost = "" if seconds is None else f"{seconds:.1f} s" + (f"<br>{memory:.0f} MiB peak" if memory else "")
        rows.append(
            f"<tr><td>{name}</td><td>{thumb}</td><td>{_volumes_cell(record, base) if status != 'failed' else '&ndash;'}</td>"
            f"<td class='num'>{cost}</td><td>{html.escape(record.get('backend', ''))}</td>"
            f"<td><span class='{css}'>{html.escape(status)}</span>{error}</td></tr>"
        )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
{provenance_html(provenance)}
<p>{len(records)} subject{'' if len(records) == 1 else 's'}, {failed} failed. Each image: the target (top row) and its labels over it (bottom row);
click an image for full size, a volume summary for every label. {ORIENTATION_NOTE}</p>
<table><thead><tr><th>subject</th><th>QC</th><th>volumes</th><th>time</th><th>backend</th><th>status</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    return write_text(path, document)


def _hex(rgba: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgba[:3])


def write_subject_report(path: Path, subject: str, records: Sequence[Mapping[str, Any]],
                         names: Mapping[int, LabelInfo] | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
    """A subject's HTML report (fMRIPrep's ``sub-XX.html``): what made it, then per image (session,
    run) its QC figure, marked with the subject's sides, and a colour legend of its labels with their
    volumes (mm³), in the figure's colours (``names``: the atlas's names and colours)."""
    from .lut import label_table
    from .morphometry import read_volumes

    path = Path(path)
    base = path.parent
    sections = []
    for record in records:
        status = record.get("status", "")
        figure = _link(record.get("figure"), base)
        parts = [f"<h2 id='{html.escape(record['id'])}'>{html.escape(record['id'])}</h2>",
                 f"<p>status: <span class='{ {'ok': 'ok', 'failed': 'failed'}.get(status, 'before')}'>{html.escape(status)}</span>"
                 + (f" &middot; {record['seconds']:.1f} s" if record.get("seconds") is not None else "")
                 + (f"<div class='error'>{html.escape(record['error'])}</div>" if record.get("error") else "") + "</p>"]
        if figure:
            parts.append(f"<p><img class='figure' src='{html.escape(figure)}' alt='labels of {html.escape(record['id'])} over its image'></p>")
        volumes = _link(record.get("volumes"), base)
        if volumes and status != "failed":
            rows = read_volumes(record["volumes"])
            table = label_table([r["label"] for r in rows], names)
            colours = colour_table(max(r["label"] for r in rows), table) if rows else np.zeros((1, 4))
            body = "".join(f"<tr><td><span class='swatch' style='background:{_hex(colours[r['label']])}'></span></td>"
                           f"<td class='num'>{r['label']}</td><td>{html.escape(r['name'])}</td><td class='num'>{r['voxels']}</td>"
                           f"<td class='num'>{r['volume_mm3']:.1f}</td></tr>" for r in rows)
            parts.append("<table class='legend'><thead><tr><th>colour</th><th>label</th><th>name</th><th>voxels</th>"
                         f"<th>volume (mm³)</th></tr></thead><tbody>{body}</tbody></table>"
                         f"<p><a href='{html.escape(volumes)}'>{html.escape(Path(volumes).name)}</a></p>")
        labels = _link(record.get("labels"), base)
        if labels:
            parts.append(f"<p><a href='{html.escape(labels)}'>{html.escape(Path(labels).name)}</a></p>")
        sections.append("\n".join(parts))
    title = f"atlasreg: {subject}"
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
{provenance_html(provenance)}
<p>{len(records)} image{'' if len(records) == 1 else 's'}. Each figure: the image (top row) and its labels over it (bottom row), in the legend's colours.
{ORIENTATION_NOTE}</p>
{chr(10).join(sections)}
</body></html>
"""
    return write_text(path, document)
