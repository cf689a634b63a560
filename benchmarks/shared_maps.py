"""Atlas/target volumes built from the shared real label maps (../shared/data/labelmaps).

Each subject: label map skull-stripped (labels >= 100 -> 0, the VoxelMorph/SynthMorph
convention), resampled to 2 mm, cropped to the brain plus a margin, and a T1-like image
synthesized from it with a per-subject seed. Native positions are kept (no pre-alignment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import numpy as np

import atlasreg
from atlasreg.spatial import crop_to_foreground, resample_to_spacing
from atlasreg.synth import skull_strip, synthesize
from atlasreg.volume import Volume

LABELMAPS = Path(os.environ.get("ATLASREG_LABELMAPS", Path(__file__).resolve().parents[2] / "shared" / "data" / "labelmaps"))


def stripped_labels(number: int) -> Volume:
    """Shared subject ``number``'s label map at its own 1 mm, skull-stripped."""
    path = LABELMAPS / f"subject{number:02d}.nii.gz"
    if not path.exists():
        sys.exit(f"shared label map not found: {path} (set ATLASREG_LABELMAPS)")
    return skull_strip(atlasreg.load(path, labels=True))


def labels_of(number: int, spacing: float = 2.0, margin: int = 6) -> Volume:
    """Shared subject ``number``'s skull-stripped labels at ``spacing`` mm, cropped to the brain plus ``margin`` voxels."""
    return crop_to_foreground(resample_to_spacing(stripped_labels(number), spacing), margin)


def subject(number: int, spacing: float = 2.0, margin: int = 6, contrast: str = "t1") -> tuple[Volume, Volume]:
    """(image, labels) of shared subject ``number`` at ``spacing`` mm; image seed = subject number."""
    labels = labels_of(number, spacing, margin)
    return synthesize(labels, seed=number, contrast=contrast), labels


TARGET_CONTRASTS = ("t1", "t2", "pd", "flair", "inverted")
RENDERERS = ("synth", "second")


def target(number: int, contrast: str = "t1", renderer: str = "synth") -> tuple[Volume, Volume]:
    """Shared subject ``number`` at 2 mm rendered by ``renderer`` (``synth``: atlasreg's synthesizer,
    ``second``: benchmarks/second_renderer.py) in ``contrast``: ``t1``, ``t2``, ``pd`` or ``flair``
    (second renderer only) or ``inverted`` (the T1 image's intensities turned upside down inside the head:
    a contrast no table made)."""
    base = "t1" if contrast == "inverted" else contrast
    if renderer == "second":
        from second_renderer import subject as second_subject

        image, labels = second_subject(number, base)
    elif base in ("pd", "flair"):
        sys.exit(f"the {base} contrast is the second renderer's (--renderer second)")
    else:
        image, labels = subject(number, contrast=base)
    if contrast == "inverted":
        head = labels.array > 0
        image = image.with_array(np.where(head, image.array.max() - image.array, 0.0).astype(np.float32))
    return image, labels


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("numbers", type=int, nargs=-1, required=True)
def main(outdir: Path, numbers: tuple[int, ...]) -> None:
    """Write subjectNN_t1.nii.gz / subjectNN_seg.nii.gz of the shared subjects NUMBERS (2 mm) into OUTDIR."""
    from common import subject_files

    for n in numbers:
        print(*subject_files(n, outdir))


if __name__ == "__main__":
    main()
