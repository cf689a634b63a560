"""Quality control a person looks at: per subject a PNG (the target alone and with its labels over
it, three orthogonal slices), and per run an HTML index (one row per subject: thumbnail, volumes,
time, backend, status) that opens offline in any browser (relative links, no scripts, inline CSS).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import label_colours, overlay_figure
from .io import atomic_path
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
"""


def _link(path: str | None, base: Path) -> str | None:
    """``path`` relative to the index's folder, if the file exists."""
    if not path or not Path(path).is_file():
        return None
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _volumes_cell(record: Mapping[str, Any], base: Path) -> str:
    link = _link(record.get("volumes"), base)
    if not link:
        return "&ndash;"
    from .volumes import read_volumes

    rows = read_volumes(record["volumes"])
    total_ml = sum(r["volume_mm3"] for r in rows) / 1000.0
    largest = sorted(rows, key=lambda r: -r["volume_mm3"])
    body = "".join(f"<tr><td>{r['label']}</td><td>{html.escape(r['name'])}</td><td class='num'>{r['volume_mm3'] / 1000:.2f} mL</td></tr>"
                   for r in largest)
    return (f"<details><summary>{total_ml:.1f} mL in {len(rows)} labels</summary><table>{body}</table></details>"
            f"<a href='{html.escape(link)}'>volumes.tsv</a>")


def write_index(path: Path, records: Sequence[Mapping[str, Any]], title: str = "atlasreg run") -> Path:
    """The run's HTML index: one row per subject (records as returned by :func:`atlasreg.segment_many`)."""
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
<p>{len(records)} subjects, {failed} failed. Each image: the target (top row) and its labels over it (bottom row);
click an image for full size, a volume summary for every label.</p>
<table><thead><tr><th>subject</th><th>QC</th><th>volumes</th><th>time</th><th>backend</th><th>status</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(document)
    return path
