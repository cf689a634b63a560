"""Atlas/target volumes built from the shared real label maps (../shared/data/labelmaps).

Each subject: label map skull-stripped (labels >= 100 -> 0, the VoxelMorph/SynthMorph
convention), resampled to 2 mm, cropped to the brain plus a margin, and a T1-like image
synthesized from it with a per-subject seed. Native positions are kept (no pre-alignment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atlasreg
from atlasreg.spatial import crop_to_foreground, resample_to_spacing
from atlasreg.synth import skull_strip, synthesize
from atlasreg.volume import Volume

LABELMAPS = Path(os.environ.get("ATLASREG_LABELMAPS", Path(__file__).resolve().parents[2] / "shared" / "data" / "labelmaps"))


def subject(number: int, spacing: float = 2.0, margin: int = 6, contrast: str = "t1") -> tuple[Volume, Volume]:
    """(image, labels) of shared subject ``number`` at ``spacing`` mm; image seed = subject number."""
    path = LABELMAPS / f"subject{number:02d}.nii.gz"
    if not path.exists():
        sys.exit(f"shared label map not found: {path} (set ATLASREG_LABELMAPS)")
    labels = skull_strip(atlasreg.load(path, labels=True))
    labels = crop_to_foreground(resample_to_spacing(labels, spacing), margin)
    return synthesize(labels, seed=number, contrast=contrast), labels


if __name__ == "__main__":
    # python benchmarks/shared_maps.py OUTDIR N [N ...]: write subjectNN_t1.nii.gz / subjectNN_seg.nii.gz
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for n in map(int, sys.argv[2:]):
        image, labels = subject(n)
        atlasreg.save(image, out / f"subject{n:02d}_t1.nii.gz")
        atlasreg.save(labels, out / f"subject{n:02d}_seg.nii.gz")
        print(out / f"subject{n:02d}_t1.nii.gz", out / f"subject{n:02d}_seg.nii.gz")
