"""A second renderer of the shared label maps: images atlasreg's synthesizer (atlasreg/synth.py)
did not make, for validating settings on data they were not chosen on.

Written apart from the synthesizer and sharing none of its code or numbers: its own intensity
tables (T1 MPRAGE-like, T2-like, PD-like and FLAIR-like, arbitrary units, per-structure values
that are not the synthesizer's, jittered per subject), and its own corruption model, in this order:

* rendered at the label map's 1 mm, each tissue modulated by a smooth texture field (about 4 mm
  correlation; the synthesizer draws independent voxel noise per label);
* an anisotropic point-spread function (one random axis about 2.5 mm FWHM, the others 1.2 mm:
  thick slices), then 2x2x2 block averaging onto the 2 mm grid (partial volume by area, not a
  Gaussian on the final grid);
* a multiplicative bias of a random cubic polynomial over the head (the synthesizer: a spline
  on a 4^3 grid), about +-20 %;
* a per-subject gamma (0.8-1.25) on the normalised intensities;
* Rician noise, the magnitude of complex Gaussian noise (the synthesizer: additive Gaussian,
  clipped at 0), so the background is Rayleigh noise, as in a magnitude image.

    python benchmarks/second_renderer.py OUTDIR N [N ...] [--contrast t1|t2|pd|flair]

``subject(number, contrast)`` gives (image, labels) on exactly the 2 mm grid of
``shared_maps.subject(number)``'s labels, so the two renderers' images share their truth.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from scipy import ndimage

import atlasreg
from atlasreg.spatial import resample
from atlasreg.volume import Volume
from shared_maps import labels_of, stripped_labels

CONTRASTS = ("t1", "t2", "pd", "flair")
SEED_BASE = 7919  # images of subject n draw from default_rng([SEED_BASE, n]): never the synthesizer's seed n

# (T1 MPRAGE-like, T2-like, PD-like, FLAIR-like) mean per structure group, arbitrary units; FreeSurfer aseg
# labels. FLAIR: fluid dark as on T1 but grey matter brighter than white matter as on T2, lesions bright:
# no monotonic map relates it to T1
TABLE: dict[tuple[int, ...], tuple[float, float, float, float]] = {
    (2, 41): (820.0, 380.0, 610.0, 480.0),  # cerebral white matter
    (7, 46): (790.0, 400.0, 620.0, 500.0),  # cerebellar white matter
    (85, 77): (700.0, 520.0, 650.0, 900.0),  # optic chiasm, white-matter hypointensities (lesions)
    (16,): (700.0, 430.0, 640.0, 520.0),  # brain stem
    (28, 60): (660.0, 470.0, 660.0, 560.0),  # ventral diencephalon
    (13, 52): (640.0, 350.0, 650.0, 470.0),  # pallidum (iron: dark on T2)
    (10, 49): (600.0, 500.0, 680.0, 600.0),  # thalamus
    (12, 51): (520.0, 540.0, 700.0, 640.0),  # putamen
    (11, 50): (500.0, 580.0, 710.0, 660.0),  # caudate
    (26, 58): (490.0, 590.0, 710.0, 660.0),  # accumbens
    (8, 47): (470.0, 620.0, 720.0, 680.0),  # cerebellar cortex
    (3, 42): (450.0, 640.0, 730.0, 700.0),  # cerebral cortex
    (18, 54): (440.0, 650.0, 735.0, 720.0),  # amygdala
    (17, 53): (430.0, 670.0, 740.0, 740.0),  # hippocampus
    (30, 62): (380.0, 560.0, 700.0, 400.0),  # vessels
    (31, 63): (420.0, 700.0, 760.0, 600.0),  # choroid plexus
    (4, 5, 14, 15, 24, 43, 44, 72): (150.0, 980.0, 850.0, 120.0),  # ventricles and CSF
}
OTHER_BRAIN = (450.0, 640.0, 730.0, 700.0)  # any other brain label: cortex-like
JITTER = 0.08  # relative, per structure group and subject
TEXTURE, TEXTURE_MM = 0.05, 4.0  # std of the smooth multiplicative texture, its correlation length
PSF_MM = (1.2, 2.5)  # FWHM in-plane and along the thick-slice axis
BIAS = 0.2  # about the largest relative deviation of the bias field
GAMMA = (0.8, 1.25)
NOISE = 0.03  # Rician sigma relative to the brightest tissue mean
CACHE = Path(__file__).parent / "work" / "second_renderer"


def _means(rng: np.random.Generator, contrast: str) -> np.ndarray:
    """Mean intensity indexed by label value, jittered per structure group."""
    column = CONTRASTS.index(contrast)
    means = np.full(100, OTHER_BRAIN[column])
    for labels, values in TABLE.items():
        means[list(labels)] = values[column] * (1.0 + JITTER * rng.uniform(-1.0, 1.0))
    means[0] = 0.0
    return means


def _bias(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """exp of a random cubic polynomial in coordinates normalised to [-1, 1], scaled to about +-BIAS."""
    axes = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    x, y, z = axes
    terms = [x**i * y**j * z**k for i in range(4) for j in range(4 - i) for k in range(4 - i - j) if i + j + k > 0]
    field = sum(rng.normal() * term for term in terms)
    field = field - field.mean()
    return np.exp(np.log1p(BIAS) * field / (np.abs(field).max() + 1e-12)).astype(np.float32)


def render(labels: Volume, seed: int, contrast: str = "t1") -> Volume:
    """An image of a skull-stripped 1 mm label map on its own grid (before block averaging)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast {contrast!r}: choose one of {', '.join(CONTRASTS)}")
    rng = np.random.default_rng([SEED_BASE, seed])
    array = np.where(labels.array < 100, labels.array, 0)
    image = _means(rng, contrast)[array].astype(np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(array.shape, dtype=np.float32), TEXTURE_MM / labels.spacing)
    image *= 1.0 + TEXTURE * texture / (texture.std() + 1e-12)
    fwhm = np.full(3, PSF_MM[0])
    fwhm[rng.integers(3)] = PSF_MM[1]
    image = ndimage.gaussian_filter(image, fwhm / labels.spacing / 2.3548, mode="constant")
    return Volume(image, labels.affine, is_labels=False)


def acquire(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bias, gamma and Rician noise on the final grid."""
    image = image * _bias(rng, image.shape)
    top = np.percentile(image[image > 0], 99.5)
    image = top * np.clip(image / top, 0.0, None) ** rng.uniform(*GAMMA)
    sigma = NOISE * top
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def subject(number: int, contrast: str = "t1") -> tuple[Volume, Volume]:
    """(image, labels) of shared subject ``number`` at 2 mm, on ``shared_maps``' label grid; the
    image is kept in benchmarks/work/second_renderer/ (the same bytes every time: fixed seeds)."""
    cached = CACHE / f"subject{number:02d}_{contrast}.nii.gz"
    labels = labels_of(number)
    if cached.exists():
        return atlasreg.load(cached), labels
    image = _render_subject(number, contrast, labels)
    CACHE.mkdir(parents=True, exist_ok=True)
    atlasreg.save(image, cached)
    return image, labels


def _render_subject(number: int, contrast: str, labels: Volume) -> Volume:
    """:func:`render` at 1 mm, 2x2x2 block averages, onto ``labels``' grid, then the acquisition."""
    fine = render(stripped_labels(number), number, contrast)
    n = np.array(fine.shape) // 2 * 2
    blocks = fine.array[: n[0], : n[1], : n[2]].reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).mean(axis=(1, 3, 5))
    coarse = Volume(blocks, fine.affine @ np.diag([2.0, 2.0, 2.0, 1.0]) + _half_voxel(fine.affine), is_labels=False)
    on_grid = resample(coarse, labels.shape, labels.affine)
    rng = np.random.default_rng([SEED_BASE, number, CONTRASTS.index(contrast)])
    return atlasreg.volume.image(acquire(on_grid.array, rng), labels.affine)


def _half_voxel(affine: np.ndarray) -> np.ndarray:
    """Translation (as a 4x4 addend) to the centre of a 2x2x2 block of 1 mm voxels: half a voxel along each axis."""
    shift = np.zeros((4, 4))
    shift[:3, 3] = affine[:3, :3] @ np.full(3, 0.5)
    return shift


@click.command(help="Write second-renderer images of shared subjects: subjectNN_<contrast>_r2.nii.gz and subjectNN_seg.nii.gz.")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("numbers", type=int, nargs=-1, required=True)
@click.option("--contrast", type=click.Choice(CONTRASTS), default="t1", show_default=True)
def main(outdir: Path, numbers: tuple[int, ...], contrast: str) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        image, labels = subject(number, contrast)
        atlasreg.save(image, outdir / f"subject{number:02d}_{contrast}_r2.nii.gz")
        atlasreg.save(labels, outdir / f"subject{number:02d}_seg.nii.gz")
        print(outdir / f"subject{number:02d}_{contrast}_r2.nii.gz")


if __name__ == "__main__":
    main()
