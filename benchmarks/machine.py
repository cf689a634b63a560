"""One line describing where a benchmark ran, and the git commit it ran at."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


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
