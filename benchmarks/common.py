"""What the benchmark scripts share: where they keep their files, the methods they compare, the
subject files they write, how they read peak memory, and the header and publishing of their tables.

Every script is a click command ``main`` (run as ``python benchmarks/NAME.py``, its folder is on
``sys.path``, so ``from common import ...`` needs no path set-up); tests/test_benchmarks.py runs
each one's ``--help`` and, where a script has one, its ``settings`` function on the defaults.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"  # inputs written once and models trained, reused across runs (not in git)
RESULTS = HERE / "results"

#: every classical backend: row label -> (backend, options)
CLASSICAL = {
    "affine": ("affine", {}),
    "simpleitk": ("simpleitk", {}),
    "ants fast": ("ants", {"preset": "fast"}),
    "ants quality": ("ants", {"preset": "quality"}),
    "svf": ("svf", {}),
}
#: the learned backends with their shipped models
LEARNED = {"voxelmorph": ("voxelmorph", {}), "contrastive": ("contrastive", {})}


def check_methods(methods: dict[str, tuple[str | None, dict]]) -> None:
    """Refuse a table naming a backend no plugin declares, or options it does not declare (whether
    or not the backend can run here): a renamed backend or option breaks the script's test, not a run."""
    from atlasreg.registry import registry

    declared = registry().backends()
    for label, (backend, options) in methods.items():
        if backend is None:
            continue
        if backend not in declared:
            raise SystemExit(f"{label}: no backend {backend!r} (declared: {', '.join(sorted(declared))})")
        declared[backend][0].resolve_options(options)


def subject_files(number: int, folder: Path, spacing: float = 2.0) -> tuple[Path, Path]:
    """(image, labels) files of shared subject ``number`` at ``spacing`` mm in ``folder``
    (``subjectNN_t1.nii.gz``, ``subjectNN_seg.nii.gz``), written once."""
    import atlasreg
    from shared_maps import subject

    image, labels = folder / f"subject{number:02d}_t1.nii.gz", folder / f"subject{number:02d}_seg.nii.gz"
    if not (image.exists() and labels.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        volume, label_map = subject(number, spacing)
        atlasreg.save(volume, image)
        atlasreg.save(label_map, labels)
    return image, labels


def aseg_dice(prediction, truth) -> float:
    """Mean aseg Dice of warped atlas labels against a target's labels. Both come from the shared
    maps, so their codes correspond: a registration that collapsed scores near 0 here instead of
    being refused as a label mismatch (``atlasreg.evaluate``'s guard for users' files)."""
    import atlasreg

    return atlasreg.evaluate(prediction, truth, "aseg", allow_label_mismatch=True)["mean_dice"]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ANTs runs in one), all threads: steadier than
    wall-clock seconds on a shared machine."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def peak_rss_gib() -> float:
    """This process's own peak resident memory in GiB (VmHWM: ru_maxrss would carry the parent's
    peak over fork + exec); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    """How this script was started, for its table's header: ``python benchmarks/NAME.py ARGS``."""
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def header(command: str) -> str:
    """Markdown lines: command, date, machine, commit."""
    return "\n".join(
        [
            f"- command: `{command}`",
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            f"- commit: {commit()}",
        ]
    )


def publish(lines: list[str], output: str | None) -> None:
    """Print a benchmark's markdown and, with ``output``, write it there too."""
    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
