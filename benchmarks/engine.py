"""The engine benchmark (issue 11): ANTs' affine, the torch affine stage, the SimpleITK affine stage,
ANTs fast, ANTs quality, the torch ``svf`` backend, the shipped learned models with and without
instance optimisation (whole pipeline: affine stage, network, engine steps) and FireANTs, side by
side in one run.

    nice -n 10 python benchmarks/engine.py [--pairs 1:8,1:9,1:10,1:2,3:4,5:6,7:8] [--threads 2] \
        [--fireants-python /work/fireants-venv/bin/python] [--one-mm] [-o benchmarks/results/engine.md]

Pairs: atlas -> target subjects of benchmarks/shared_maps.py (2 mm synthesized T1-like images,
native positions), scored with the aseg protocol (mean Dice over 28 structures); folding: percent
of the target's brain voxels where det J <= 0. ``--renderer second`` / ``--contrast``: atlas and
targets rendered by benchmarks/second_renderer.py, targets in another contrast (the atlas stays T1).
Seconds: wall-clock registration alone, one pair and one method after another in this process
(FireANTs in its own virtual environment, timed inside it, start-up excluded); CPU seconds: all
threads of this process and of the child ANTs runs in, over the same span (ratios of CPU seconds
hold on a shared machine where wall seconds do not). Every result is appended to benchmarks/work/engine/results[-RENDERER-CONTRAST].jsonl
as it comes, so a rerun resumes; delete that file to measure again. ``--one-mm``: the svf backend on
a 1 mm pair, in a child process each, for time and peak memory (max RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from statistics import mean

import click

from common import HERE, WORK as WORK_ROOT, aseg_dice, check_methods, command_line, cpu_seconds, header, peak_rss_gib, publish, subject_files
from shared_maps import RENDERERS, TARGET_CONTRASTS

WORK = WORK_ROOT / "engine"
HELD_OUT = (8, 9, 10)

#: (row label, backend, options); None: the SimpleITK affine stage called directly (not a backend)
METHODS = [
    ("ANTs Affine", "ants", {"transform": "Affine"}),
    ("torch affine (affine backend)", "affine", {}),
    ("SimpleITK affine stage", None, {}),
    ("ANTs fast", "ants", {"preset": "fast"}),
    ("svf", "svf", {}),
    ("svf quality", "svf", {"preset": "quality"}),
    ("ANTs quality", "ants", {"preset": "quality"}),
    ("contrastive (shipped)", "contrastive", {}),
    ("contrastive + 20 steps", "contrastive", {"optimize_steps": 20}),
    ("voxelmorph + 20 steps", "voxelmorph", {"optimize_steps": 20}),
]


def register(backend: str | None, options: dict, moving, fixed):
    import atlasreg
    from atlasreg.transform import Transform

    if backend is None:
        from atlasreg_plugins.simpleitk.affine_stage import affine_to_ras, register_affine
        from atlasreg_plugins.simpleitk.convert import to_sitk

        return Transform.from_matrix(fixed, affine_to_ras(register_affine(to_sitk(fixed), to_sitk(moving))))
    return atlasreg.register(moving, fixed, backend=backend, options=options)


def score(warped_labels, target_labels, transform=None) -> tuple[float, float | None]:
    from atlasreg.metrics import folding_percent

    dice = aseg_dice(warped_labels, target_labels)
    folding = None if transform is None else folding_percent(transform.jacobian_determinant(), target_labels.array > 0)
    return dice, folding


def results_file(renderer: str, contrast: str):
    """Where the results of one renderer and target contrast accumulate (the synthesizer's T1: results.jsonl)."""
    return WORK / ("results.jsonl" if (renderer, contrast) == ("synth", "t1") else f"results-{renderer}-{contrast}.jsonl")


def load_results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append(result: dict, path) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
    folding = "–" if result["folding"] is None else f"{result['folding']:.3f} %"
    print(f"{result['pair']} {result['method']:<30} Dice {result['dice']:.3f}  {result['seconds']:7.1f} s  folding {folding}", file=sys.stderr, flush=True)


def run_fireants(python: str, threads: int, pairs: list[tuple[int, int]], done: set, subjects, path) -> None:
    """FireANTs (affine + greedy, its LPBA40 example settings) in its own environment, scored here."""
    import atlasreg

    todo = [(a, t) for a, t in pairs if (f"{a:02d}->{t:02d}", "FireANTs") not in done]
    if not todo:
        return
    folder = WORK / "fireants"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for a, t in todo:
        for n in (a, t):
            subject_files(n, folder)
        jobs.append({"moving": str(folder / f"subject{a:02d}_t1.nii.gz"), "moving_seg": str(folder / f"subject{a:02d}_seg.nii.gz"),
                     "fixed": str(folder / f"subject{t:02d}_t1.nii.gz"), "output": str(folder / f"warped_{a:02d}_{t:02d}.nii.gz")})
    (folder / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([python, str(HERE / "fireants_peer.py"), str(folder / "jobs.json"), str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"FireANTs failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        (WORK / "fireants_error.txt").write_text(proc.stderr)
        return
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    for (a, t), job, sec in zip(todo, jobs, seconds):
        dice, _ = score(atlasreg.load(job["output"], labels=True), subjects(t)[1])
        append({"pair": f"{a:02d}->{t:02d}", "method": "FireANTs", "dice": dice, "folding": None, "seconds": sec}, path)


def one_mm_child(spacing: float) -> None:
    """Child process: svf on the 1 mm pair 01 -> 07 at working spacing ``spacing``; print seconds, Dice, max RSS."""
    import atlasreg
    from shared_maps import subject

    moving, moving_labels = subject(1, spacing=1.0)
    fixed, fixed_labels = subject(7, spacing=1.0)
    start = time.perf_counter()
    transform = atlasreg.register(moving, fixed, backend="svf", options={"spacing": spacing})
    seconds = time.perf_counter() - start
    dice, folding = score(transform.warp_labels(moving_labels), fixed_labels, transform)
    rss = peak_rss_gib()
    print(json.dumps({"spacing": spacing, "seconds": seconds, "dice": dice, "folding": folding, "max_rss_gib": rss, "shape": list(fixed.shape)}))


def table(results: list[dict], pairs: list[str]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in results))
    by = {(r["pair"], r["method"]): r for r in results}
    lines = ["| atlas → target | " + " | ".join(f"{m} Dice / s" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for pair in pairs:
        cells = [f"{by[pair, m]['dice']:.3f} / {by[pair, m]['seconds']:.1f}" if (pair, m) in by else "–" for m in methods]
        lines.append(f"| {pair.replace('->', ' → ')} | " + " | ".join(cells) + " |")
    return lines


def summary(results: list[dict], pairs: list[str], title: str) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in results))
    by = {(r["pair"], r["method"]): r for r in results}
    complete = [m for m in methods if all((p, m) in by for p in pairs)]

    def avg(method: str, key: str) -> float:
        return mean(by[p, method][key] for p in pairs)

    lines = [f"{title} ({len(pairs)} pairs)", "", "| method | mean Dice | mean s / pair | × ANTs Affine time | × ANTs fast time | × ANTs quality time "
             "| mean CPU s / pair | × ANTs quality CPU | % folding (det J ≤ 0, brain) |", "|---|---|---|---|---|---|---|---|---|"]
    ref = {m: avg(m, "seconds") for m in ("ANTs Affine", "ANTs fast", "ANTs quality") if m in complete}
    for m in complete:
        s = avg(m, "seconds")
        ratios = [f"{s / ref[r]:.3f}" if r in ref else "–" for r in ("ANTs Affine", "ANTs fast", "ANTs quality")]
        cpu = [by[p, m].get("cpu_seconds") for p in pairs]
        cpu_ref = [by[p, "ANTs quality"].get("cpu_seconds") for p in pairs] if "ANTs quality" in complete else [None]
        cpu_cells = ["–", "–"] if None in cpu else [f"{mean(cpu):.1f}", "–" if None in cpu_ref else f"{mean(cpu) / mean(cpu_ref):.3f}"]
        folds = [by[p, m]["folding"] for p in pairs]
        fold = "–" if any(f is None for f in folds) else f"{mean(folds):.4f}"
        lines.append(f"| {m} | {avg(m, 'dice'):.3f} | {s:.1f} | " + " | ".join(ratios + cpu_cells) + f" | {fold} |")
    return lines


@click.command()
@click.option("--pairs", default="1:8,1:9,1:10,1:2,3:4,5:6,7:8", show_default=True, help="atlas:target subject numbers")
@click.option("--threads", default=2, show_default=True, help="threads for torch and ITK (ANTs, SimpleITK)")
@click.option("--fireants-python", default="", help="python of a virtual environment with fireants installed (empty: skip)")
@click.option("--one-mm/--no-one-mm", default=False, help="Also time svf on a 1 mm pair (child processes, peak memory).")
@click.option("--run/--no-run", default=True, help="--no-run: only write the tables from the results measured so far.")
@click.option("--renderer", type=click.Choice(RENDERERS), default="synth", show_default=True,
              help="what renders atlas (T1) and targets: atlasreg's synthesizer or benchmarks/second_renderer.py")
@click.option("--contrast", type=click.Choice(TARGET_CONTRASTS), default="t1", show_default=True,
              help="how the targets are rendered (the atlas stays T1); inverted = T1 turned upside down inside the head")
@click.option("--methods", default="", help="Only these rows, comma-separated labels (e.g. 'ANTs fast,svf') [default: every row].")
@click.option("--child", type=float, default=None, hidden=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the markdown here.")
def main(pairs: str, threads: int, fireants_python: str, one_mm: bool, run: bool, renderer: str, contrast: str, methods: str,
         child: float | None, output: str | None) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from functools import lru_cache

    from shared_maps import target

    if child is not None:
        one_mm_child(child)
        return
    settings()
    chosen = [m for m in METHODS if not methods or m[0] in methods.split(",")]
    if methods and len(chosen) != len(methods.split(",")):
        raise click.BadParameter(f"rows are {', '.join(m[0] for m in METHODS)}", param_hint="--methods")
    started = header(command_line())  # the commit measured, not the one at the end
    if fireants_python and (renderer, contrast) != ("synth", "t1"):
        raise click.BadParameter("FireANTs runs on the synthesizer's T1 pairs only", param_hint="--fireants-python")
    rendered = lru_cache(maxsize=None)(lambda n, c: target(n, c, renderer))
    subjects = lru_cache(maxsize=None)(lambda n: rendered(n, contrast))
    path = results_file(renderer, contrast)
    pair_list = [tuple(int(v) for v in p.split(":")) for p in pairs.split(",")]
    done = {(r["pair"], r["method"]) for r in load_results(path)}
    for a, t in pair_list if run else []:
        moving, moving_labels = rendered(a, "t1")
        fixed, fixed_labels = subjects(t)
        for label, backend, options in chosen:
            if (f"{a:02d}->{t:02d}", label) in done:
                continue
            start, cpu_start = time.perf_counter(), cpu_seconds()
            transform = register(backend, options, moving, fixed)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            dice, folding = score(transform.warp_labels(moving_labels), fixed_labels, transform)
            append({"pair": f"{a:02d}->{t:02d}", "method": label, "dice": dice, "folding": folding, "seconds": seconds,
                    "cpu_seconds": cpu}, path)
    if fireants_python and run:
        run_fireants(fireants_python, threads, pair_list, done, subjects, path)

    results = load_results(path)
    names = [f"{a:02d}->{t:02d}" for a, t in pair_list]
    held_out = [p for p, (_, t) in zip(names, pair_list) if t in HELD_OUT and p.startswith("01")]
    lines = [started, f"- images: atlas T1, targets {contrast}, rendered by {renderer}", f"- OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset')}", f"- threads: {threads} (torch and ITK), torch {torch.__version__}", ""]
    lines += table(results, names) + [""] + summary(results, names, "All pairs") + [""]
    if held_out:
        lines += summary(results, held_out, "Held-out targets only, atlas 01 → 08, 09, 10") + [""]
    if one_mm:
        lines += ["svf on a 1 mm pair (01 → 07; one child process each; max RSS of the whole process)", "",
                  "| working spacing | grid (input) | s | Dice | % folding | max RSS GiB |", "|---|---|---|---|---|---|"]
        for spacing in (2.0, 1.0):
            proc = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", str(spacing)], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            lines.append(f"| {spacing} mm | {'×'.join(map(str, r['shape']))} | {r['seconds']:.1f} | {r['dice']:.3f} | {r['folding']:.4f} | {r['max_rss_gib']:.2f} |")
    publish(lines, output)


def settings(**_: object) -> None:
    """Check the methods against what the plugins declare (a renamed backend or option fails here)."""
    check_methods({label: (backend, options) for label, backend, options in METHODS})


if __name__ == "__main__":
    main()
