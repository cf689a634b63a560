"""The options of ``atlasreg``'s commands, each declared once: those several commands share (the
method, the atlases, how a study runs) reach a command gathered into one keyword argument that
goes straight to the API function it calls."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import click

from .atlases import DEFAULT_ATLAS
from .demo import DEFAULT_TARGETS, METHODS as DEMO_METHODS, TARGET_DONORS
from .pipeline import StudyOptions
from .plugin_api import parse_assignments
from .registry import DEFAULT_BACKEND, DEFAULT_FUSION
from .spatial import LABEL_INTERPOLATIONS
from .synth import CONTRASTS


class OnceCommand(click.Command):
    """A command that refuses an option given twice unless it is repeatable: click keeps the last
    value silently (``compare -a A -a B`` would compare against B alone)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _, _, order = self.make_parser(ctx).parse_args(args=list(args))
        seen = set()
        for param in order:
            if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
                if param.name in seen:
                    raise click.UsageError(f"{' / '.join(param.opts)} given twice; it takes one value", ctx)
                seen.add(param.name)
        return super().parse_args(ctx, args)


class Group(click.Group):
    """``atlasreg``: every command an :class:`OnceCommand`."""

    command_class = OnceCommand


#: the options of the ``atlasreg`` group itself: logging and progress (see :mod:`atlasreg.logs`)
group_options = (
    click.option("-v", "--verbose", count=True, help="More messages: -v what each step did and took, -vv debugging "
                 "detail and the traceback of an internal error (ATLASREG_DEBUG=1: Python raises it instead)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bars and no log messages below errors (results and the "
                 "files written are still printed)."),
    click.option("--log-file", type=click.Path(dir_okay=False), help="Also append every message (from -v's level, with times) to this file."),
    click.option("--no-progress", is_flag=True, help="No progress bars (they are off anyway when stderr is not a terminal, "
                 "or with TQDM_DISABLE=1)."),
)


#: the protocols are plugins' too: a name is checked where it is used, not frozen into the options here
PROTOCOL_NAMES = "aseg, lpba40, mindboggle101, dk, labels or a plugin's"


def options(*declared: Callable) -> Callable:
    """One decorator applying click options in the order listed (so ``--help`` lists them so)."""
    def decorate(command: Callable) -> Callable:
        for option in reversed(declared):
            command = option(command)
        return command
    return decorate


def _gathered(into: str, build: Callable[..., Any], names: Sequence[str], *declared: Callable) -> Callable:
    """Options ``declared`` whose values (parameters ``names``) the command receives as ``into=build(...)``."""
    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def gather(*args: Any, **kwargs: Any) -> Any:
            kwargs[into] = build(**{name: kwargs.pop(name) for name in names if name in kwargs})
            return command(*args, **kwargs)
        return options(*declared)(gather)
    return decorate


def _method(backend: str, opts: tuple[str, ...], model: str | None, optimize_steps: int | None, **fusion: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`atlasreg.pipeline.segment` (``register_file`` without the
    fusion ones): -O pairs plus the learned-backend shortcuts --model and --optimize-steps."""
    backend_options: dict[str, Any] = parse_assignments(opts)
    if model:
        backend_options["model"] = model
    if optimize_steps is not None:
        backend_options["optimize_steps"] = optimize_steps
    if fusion:
        fusion["fusion_options"] = parse_assignments(fusion.pop("fusion_opts"), "fusion option")
    return {"backend": backend, "backend_options": backend_options, **fusion}


BACKEND = (
    click.option("-b", "--backend", default=DEFAULT_BACKEND, help="Registration backend (see `atlasreg backends`)  [default: "
                 f"{DEFAULT_BACKEND}, about 14 s a pair at 2 mm on 2 CPU cores, as accurate as ants (preset=quality, about 180 s); "
                 "ants -O preset=fast about 6 s, affine 2 s, contrastive 2 s, with --optimize-steps 20 about 6 s: benchmarks/RESULTS.md]"),
    click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE",
                 help="Backend option (repeatable; `atlasreg options NAME` lists them)."),
    click.option("--model", help="Learned backends: a model NAME (see `atlasreg models`) or file  [default: the shipped model]"),
    click.option("--optimize-steps", type=int, help="Learned backends: refine the network's velocity field on this pair by N Adam "
                 "steps (instance optimisation; the weights stay as trained)."),
)
FUSION = (
    click.option("-f", "--fusion", default=DEFAULT_FUSION, help="Label fusion for several atlases (see `atlasreg fusions`)  [default: "
                 f"{DEFAULT_FUSION}, 0.2 s a target for 3 atlases; weighted 0.4 s, staple 25 s, jlf 77 s: benchmarks/RESULTS.md]"),
    click.option("-F", "--fusion-option", "fusion_opts", multiple=True, metavar="KEY=VALUE", help="Fusion option (repeatable)."),
    click.option("--label-interp", type=click.Choice(LABEL_INTERPOLATIONS), default="nearest", show_default=True,
                 help="How atlas labels are resampled."),
)
#: -b -O --model --optimize-steps: the command receives ``method`` (``backend``, ``backend_options``)
backend_options = _gathered("method", _method, ("backend", "opts", "model", "optimize_steps"), *BACKEND)
#: and -f -F --label-interp: ``method`` holds ``fusion``, ``fusion_options``, ``label_interp`` too
method_options = _gathered("method", _method, ("backend", "opts", "model", "optimize_steps", "fusion", "fusion_opts", "label_interp"),
                           *BACKEND, *FUSION)

atlas_options = options(
    click.option("-a", "--atlas", "atlases", nargs=2, multiple=True, metavar="IMAGE LABELS", callback=lambda _c, _p, value: list(value) or None,
                 help="An atlas image and its label map (repeatable)."),
    click.option("--builtin-atlas", help=f"Use this built-in atlas (see `atlasreg atlases`); the default when no -a is given: {DEFAULT_ATLAS}."),
)

#: options of commands that run many targets, received as ``study`` (a StudyOptions)
study_options = _gathered(
    "study", StudyOptions, ("jobs", "threads", "dask", "scheduler", "lut", "redo"),
    click.option("--jobs", type=int, default=1, show_default=True, help="Targets segmented at a time, each in its own process."),
    click.option("--threads", type=int, help="Threads per job  [default: cores / jobs, so jobs x threads <= cores]"),
    click.option("--dask", is_flag=True, help="Run the targets on a Dask LocalCluster of --jobs worker processes."),
    click.option("--scheduler", metavar="ADDRESS", help="Run the targets on an existing Dask cluster, e.g. tcp://host:8786 (its workers "
                 "read the inputs and write the outputs: they need the same file system; for ANTs start them with "
                 "DASK_DISTRIBUTED__WORKER__DAEMON=False)."),
    click.option("--lut", type=click.Path(), help="Label names and colours: a FreeSurfer LUT or a BIDS dseg.tsv  [default: the "
                 "built-in atlas's names, else FreeSurfer's aseg names]"),
    click.option("--redo", is_flag=True, help="The output folder holds outputs of other settings: make every output again with "
                 "these (without it such a run is refused)."),
)

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

register_options = options(
    click.argument("moving"),
    click.argument("fixed"),
    click.option("-o", "--output", required=True, help="Warped moving image, on FIXED's grid (.nii.gz)."),
    click.option("--transform-out", help="Also write the transform as an ITK-convention NIfTI displacement field on FIXED's grid "
                 "(`atlasreg apply` and antsApplyTransforms read it)."),
    click.option("--inverse-out", help="Also write the inverse transform, on MOVING's grid: it takes FIXED-space images (a lesion "
                 "mask, a statistic map) back onto MOVING. Exact for the affine and svf backends; inverted numerically, with a "
                 "warning, for the others."),
)

apply_options = options(
    click.argument("transform"),
    click.argument("image"),
    click.option("-r", "--reference", required=True, help="The grid to resample onto: the fixed image the transform was made on "
                 "(with --inverse: an image of the moving space)."),
    click.option("-o", "--output", required=True, help="The resampled image (.nii.gz), on REFERENCE's grid and affine."),
    click.option("--labels", is_flag=True, help="IMAGE is a label map: nearest-neighbour, integer labels kept."),
    click.option("--inverse", is_flag=True, help="Apply the transform's inverse (found numerically for a displacement field: "
                 "a warning says so)."),
)

segment_options = options(
    click.argument("targets", nargs=-1, required=True),
    click.option("-o", "--output", required=True, help="One target file: its label map (.nii.gz, integer, TARGET's grid and affine). "
                 "Several targets, a folder or a glob: an output folder (OUTDIR/<name>_seg.nii.gz, _volumes.tsv, _qc.png, index.html)."),
)

evaluate_options = options(
    click.argument("pred"),
    click.argument("truth"),
    click.option("--protocol", default="aseg", show_default=True, help=f"Which labels and regions to score: {PROTOCOL_NAMES}."),
    click.option("--hd95", is_flag=True, help="Also compute the 95th-percentile Hausdorff distance (mm) per label."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON object (mean_dice, dice per label, region_dice, label_names)."),
    click.option("--allow-label-mismatch", is_flag=True, help="Score even a TRUTH whose label codes do not correspond to PRED's "
                 "(refused by default: its scores would be noise)."),
)

synth_options = options(
    click.argument("labels"),
    click.option("-o", "--output", required=True, help="Synthetic image on LABELS' grid and affine (.nii.gz)."),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed: the same seed gives the same image, byte for byte."),
    click.option("--contrast", type=click.Choice(CONTRASTS), default="t1", show_default=True,
                 help="t1: realistic T1 tissue intensities; t2: T2-like (fluid bright); random: a random intensity per label."),
    click.option("--skull-strip/--no-skull-strip", default=True, show_default=True, help="Set labels >= 100 (non-brain) to background first."),
)

volumes_options = options(
    click.argument("seg"),
    click.option("--lut", type=click.Path(), help="Label names: a FreeSurfer LUT or a BIDS dseg.tsv  [default: the dseg.tsv beside SEG "
                 "(SEG's name with .tsv, as `atlasreg segment` writes it), else FreeSurfer's names]"),
    click.option("-o", "--output", help="Write the table to this .tsv file instead of printing it."),
)

bids_options = options(
    click.argument("bids_dir", type=click.Path()),
    click.argument("output_dir", type=click.Path()),
    click.argument("analysis_level", type=click.Choice(["participant", "group"])),
    click.option("--participant-label", "--participant_label", "participants", multiple=True, metavar="LABEL...",
                 help="Participants to process: 01 02 ... (or sub-01)  [default: all]"),
    click.option("--session", "--session-label", "--session_label", "sessions", multiple=True, metavar="LABEL...",
                 help="Sessions to process: 1 2 ...  [default: all]"),
    click.option("-w", "--work-dir", type=click.Path(file_okay=False),
                 help="Folder for scratch files (a --dask cluster's spill space)  [default: OUTPUT_DIR]"),
)

demo_options = options(
    click.option("-o", "--output-dir", default="atlasreg-demo", show_default=True, help="Folder for demo.png, results.md and results.json."),
    click.option("--backends", help=f"Comma-separated methods to compare (default: those of {','.join(DEMO_METHODS)} available here; "
                 "contrastive+io: the shipped model with 20 steps of instance optimisation)."),
    click.option("--targets", type=int, default=DEFAULT_TARGETS, show_default=True, help=f"How many donors to segment (1-{len(TARGET_DONORS)})."),
    click.option("--spacing", type=float, default=2.0, show_default=True, help="Voxel size (mm) the donors are resampled to."),
)

compare_options = options(
    click.option("-b", "--backend", "specs", multiple=True, required=True, metavar="NAME[:KEY=VALUE...]",
                 help="Methods to compare, comma-separated or repeated; a backend at other settings: ants:preset=fast."),
    click.option("-a", "--atlas", "atlases", nargs=2, multiple=True, metavar="IMAGE LABELS",
                 help="An atlas registered to every target (repeatable: each target against each atlas)."),
    click.option("--targets", metavar="GLOB", help="Target images (quote the pattern)."),
    click.option("--truth", metavar="GLOB", help="Their manual label maps; wildcards must match the same subject ids."),
    click.option("--dataset", nargs=2, metavar="KIND ROOT", help="Targets from a dataset instead: lpba40, mindboggle101, oasis or csv."),
    click.option("--split", help="With --dataset: which split to use as targets  [default: test if it has one, else all]"),
    click.option("--atlas-id", "atlas_ids", multiple=True, help="With --dataset: use this subject as an atlas (instead of -a; repeatable)."),
    click.option("--leave-one-out", is_flag=True, help="Every subject with a label map (of --targets/--truth or the --dataset split) "
                 "is the atlas of every other one (instead of -a / --atlas-id)."),
    click.option("--figure-target", "figure_targets", multiple=True, metavar="ID",
                 help="Draw the figures of this target only (repeatable)  [default: every target]"),
    click.option("--model", "models", multiple=True, metavar="NAME=MODEL.pt", help="Model file of a learned backend (repeatable)."),
    click.option("--protocol", help=f"Scoring protocol: {PROTOCOL_NAMES}  [default: the dataset's, else aseg]"),
    click.option("-o", "--output", required=True, help="Report folder: results.csv, summary.md, figures (resumes if it exists)."),
    click.option("--skip-failed", is_flag=True, help="On a rerun, keep pairs recorded as failed instead of retrying them."),
    click.option("--jobs", type=int, default=1, show_default=True, help="Pairs run at a time, each in its own process (threads per job: cores / N)."),
)

train_options = options(
    click.option("-b", "--backend", required=True, help="Learned backend to train: contrastive or voxelmorph."),
    click.option("--synth", multiple=True, metavar="GLOB", help="Label maps (repeatable glob): train on pairs synthesized from them, no images needed."),
    click.option("--images", multiple=True, metavar="GLOB", help="Training images instead (repeatable glob; quote it)."),
    click.option("--atlas", nargs=2, metavar="IMAGE LABELS", help="With --images: train atlas -> subject pairs; without it, random subject pairs. "
                 "With --synth: the atlas of --val-images only."),
    click.option("-o", "--output", required=True, help="Model file to write (.pt); rewritten every --save-every steps."),
    click.option("--spacing", type=float, help="Working grid spacing in mm  [default: 2]"),
    click.option("--shape", help="Working grid shape X,Y,Z  [default: 96,112,96]"),
    click.option("--crop", help="Training crop X,Y,Z (multiples of 16)  [default: the backend's]"),
    click.option("--steps", type=int, default=2000, show_default=True, help="Optimiser steps: the length of the cosine learning-rate schedule."),
    click.option("--max-minutes", type=float, default=0.0, help="Stop (and save) after this much wall-clock time."),
    click.option("--batch-size", type=int, default=2, show_default=True, help="Pairs per step, over all processes (torchrun)."),
    click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate at step 0."),
    click.option("--lr-floor", type=float, default=0.01, show_default=True, help="The cosine schedule ends at lr x this."),
    click.option("--losses", help="Comma-separated loss terms to use (contrastive: recon,dice,smooth,contrast; voxelmorph: sim,dice,smooth). "
                 "dice (label overlap) is the data term of --synth pairs, recon / sim (image similarity) that of --images."),
    click.option("--weight", "weights", multiple=True, metavar="TERM=VALUE", help="Loss weight, e.g. smooth=0.01 contrast=0.05 (repeatable)."),
    click.option("-C", "--config", multiple=True, metavar="KEY=VALUE", help="Any other model config key, e.g. contrast=global, recon=mse (repeatable)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--resume", help="Continue from this model file (weights, optimiser, step)."),
    click.option("--init", help="Fine-tune: start from this model file's weights and config, with a fresh optimiser and schedule (step 0)."),
    click.option("--save-every", type=int, default=100, show_default=True, help="Steps between model file rewrites."),
    click.option("--prefetch/--no-prefetch", default=True, show_default=True,
                 help="On the CPU: synthesize the next batch in a background thread while the current step runs (uses one more core)."),
    click.option("--val-images", multiple=True, metavar="GLOB", help="Validation images: Dice reported every --val-every steps (needs --atlas)."),
    click.option("--val-labels", multiple=True, metavar="GLOB", help="Validation label maps, in the same order as --val-images."),
    click.option("--val-every", type=int, default=250, show_default=True),
    click.option("--val-protocol", default="aseg", show_default=True, help=f"Scoring protocol of the validation: {PROTOCOL_NAMES}."),
    click.option("--log", help="JSON-lines log of every loss term  [default: MODEL.pt.log.jsonl]"),
    click.option("--cache-dir", help="Where affine pre-alignments are cached (share it between models)  [default: MODEL.pt.cache]"),
)

LIST_OPTIONS = ("--participant-label", "--participant_label", "--session", "--session-label", "--session_label")
LEVELS = ("participant", "group")


def _arities(command: click.Command) -> dict[str, int]:
    """How many values each option name of ``command`` takes."""
    return {name: 0 if (param.is_flag or param.count) else param.nargs
            for param in command.params if isinstance(param, click.Option) for name in (*param.opts, *param.secondary_opts)}


def _split(args: list[str], arities: dict[str, int], lists: Sequence[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Options with their values, and the other words, each with the list option it follows (if any)."""
    taken, words = [], []
    current = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            current = name if name in lists and "=" not in arg else None
            count = 1 + (0 if "=" in arg or current else arities.get(name, 0))
            taken += args[index:index + count]
            index += count
            continue
        words.append((arg, current))
        index += 1
    return taken, words


def bids_app_args(args: list[str], group: click.Group) -> list[str]:
    """``atlasreg bids`` the BIDS Apps way, in the order click reads: lists separated by spaces
    (``--participant-label 01 02``, each value then gets its flag) and options anywhere, before the
    positionals too (``bids --participant-label 01 BIDS_DIR OUTPUT_DIR participant``): the
    positionals are the analysis level and the two words before it; other words after a list
    option are its values."""
    arities, at = _arities(group), 0
    while at < len(args) and args[at].startswith("-"):  # the group's options, then the command
        at += 1 + (0 if "=" in args[at] else arities.get(args[at], 0))
    if at >= len(args) or args[at] != "bids":
        return args
    taken, words = _split(args[at + 1:], _arities(group.commands["bids"]), LIST_OPTIONS)
    level = next((k for k, (word, _) in enumerate(words) if word in LEVELS and k >= 2), None)
    positionals = [word for word, _ in words[level - 2:level + 1]] if level is not None else [w for w, flag in words if flag is None]
    values = [(flag, word) for k, (word, flag) in enumerate(words)
              if flag is not None and (level is None or not level - 2 <= k <= level)]
    options = [arg for arg in taken if arg not in LIST_OPTIONS]
    stray = [word for k, (word, flag) in enumerate(words) if flag is None and level is not None and not level - 2 <= k <= level]
    return [*args[:at + 1], *positionals, *stray, *options, *(arg for flag, word in values for arg in (flag, word))]
