"""Registration training pairs synthesized from label maps, in the style of SynthMorph (Hoffmann et
al., 2022), a whole batch at once in torch on the training device (CPU or GPU).

Each pair takes two label maps already on one working grid (affinely pre-aligned), and for each
side draws: a rigid-plus-scale affine jitter (built in voxel space of the isotropic grid, so it is
a true rotation) composed with a smooth random diffeomorphism (a velocity field drawn on a grid of
control points ``deform_spacing`` voxels apart, integrated by scaling and squaring on a grid four
times coarser than the crop, the displacement then upsampled), labels read by nearest neighbour;
then each image its OWN contrast (``_contrast``: every label's mean intensity uniform at random,
any order of tissues, or a realistic table, T1-like, T2-like or inverted T1 (dark white matter,
bright CSF), jittered per label), texture, a smooth multiplicative bias field, blur, a gamma
curve, a lower acquisition resolution along a random axis, noise, and a brain mask (background 0,
sometimes with clipped noise as in ``atlasreg.synth``). The two images of a pair share no
contrast: training compares their labels (``atlasreg.recipe.label_overlap``), not their
intensities. On request the fixed label map is rendered once more under a third, independent
contrast (``fixed_view``: the same anatomy voxel for voxel, for a cross-contrast term). Images are
z-scored with the mean and standard deviation of their brain (labels > 0), the voxels that
``atlasreg.volume.zscore`` (Otsu, holes filled) finds at inference on a skull-stripped image.

Randomness: every scalar and small field of pair k is drawn on the CPU from one ``torch.Generator``
seeded with its own seed (no device round trip per draw; Python reads the scalars that shape the
work, e.g. the blur kernel's radius, without a device sync), and the full-size noise of each image
from a generator on the device seeded from that CPU generator. So a pair depends on its seed
alone, not on the batch it is part of (one process or many give the same pairs, up to float
summation order), and the same seeds on the same device give the same batch, byte for byte. The
view is drawn last: asking for it leaves the pair itself unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AtlasregError
from .flow import gaussian_blur, integrate, resize, sample_at
from .recipe import TrainingPair
from .synth import preset_means

__all__ = ["SynthSettings", "SynthPairs", "pair_seed"]

CROP_JITTER = 6  # voxels: crops stay near the grid centre (the working grid is centred on the brain)


@dataclass(frozen=True)
class SynthSettings:
    """Ranges of every random draw (upper bounds; each is drawn uniformly from 0 or 1 up to it)."""

    rotate_degrees: float = 5.0  # per side: what the affine stage leaves, and then some
    scale: float = 0.05  # relative, per axis
    shift: float = 3.0  # voxels
    deform: float = 1.5  # std (voxels) of the coarse velocity field (the maps differ in anatomy already)
    deform_spacing: int = 8  # voxels between its control points
    texture: float = 0.05  # per-label std of the intensity, on a 0-1 scale
    presets: float = 0.5  # probability that a side's contrast is a realistic table (T1, T2-like, inverted T1), not random
    preset_jitter: float = 0.1  # per-label jitter of a table's means, on a 0-1 scale
    bias: float = 0.3  # std of the log bias field
    blur: float = 1.0  # std (voxels) of the Gaussian blur
    gamma: float = 0.25  # std of the log gamma exponent
    lowres: float = 2.5  # largest acquisition voxel size along one axis (grid voxels)
    noise: float = 0.05  # std of the additive noise
    background_noise: float = 0.5  # probability that the background keeps (clipped) noise


def pair_seed(seed: int, step: int, index: int) -> int:
    """The seed of the ``index``-th pair of step ``step``: independent of how many processes share the batch."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


class _Side(NamedTuple):
    """One side's spatial draws: which map, the affine jitter and the coarse velocity (voxels)."""

    index: int
    matrix: torch.Tensor  # (3, 3)
    shift: torch.Tensor  # (3,)
    velocity: torch.Tensor  # (3, *control points)


class _Look(NamedTuple):
    """One image's intensity draws (scalars as Python numbers: they shape the work)."""

    means: torch.Tensor  # (K,)
    stds: torch.Tensor  # (K,)
    blur: float
    log_bias: torch.Tensor  # (1, 4, 4, 4)
    gamma: float
    axis: int
    factor: float
    noise: float
    keep_noise: bool
    seed: int  # of the device generator for this image's full-size noise


class _Draw(NamedTuple):
    start: tuple[int, int, int]
    sides: tuple[_Side, _Side]
    looks: tuple[_Look, ...]  # moving, fixed[, fixed view]


class SynthPairs:
    """``TrainingPair`` batches (moving, fixed, their labels, optionally ``fixed_view``) of shape
    ``crop`` from label maps on one grid, synthesized on ``device``."""

    def __init__(self, maps: Sequence[np.ndarray], crop: Sequence[int], settings: SynthSettings = SynthSettings(),
                 device: str | torch.device = "cpu") -> None:
        if not maps:
            raise AtlasregError("synthesis needs at least one label map")
        shapes = {m.shape for m in maps}
        if len(shapes) != 1:
            raise AtlasregError(f"label maps must share one grid, got shapes {sorted(shapes)}")
        self.shape = tuple(maps[0].shape)
        self.crop = tuple(int(c) for c in crop)
        if any(c > n for c, n in zip(self.crop, self.shape)):
            raise AtlasregError(f"crop {self.crop} is larger than the grid {self.shape}")
        if any(c < 2 for c in self.crop):
            raise AtlasregError(f"crop {self.crop}: at least 2 voxels along each axis")
        self.device = torch.device(device)
        self.labels = np.unique(np.concatenate([[0], *(np.unique(m) for m in maps)]))  # index 0 = background
        lookup = np.zeros(int(self.labels.max()) + 1, np.int64)
        lookup[self.labels] = np.arange(len(self.labels))
        # compact label indices (0 = background), as float for grid_sample (nearest keeps them whole)
        self.maps = torch.from_numpy(np.stack([lookup[m] for m in maps]).astype(np.float32))[:, None].to(self.device)
        self.values = torch.from_numpy(self.labels.astype(np.int64)).to(self.device)
        self.settings = settings
        t1 = torch.from_numpy(preset_means(self.labels, "t1")) / 150.0
        t2 = torch.from_numpy(preset_means(self.labels, "t2")) / 150.0
        brain = torch.from_numpy(self.labels > 0)
        # realistic tissue tables on a 0-1 scale: T1, T2-like, inverted T1 (dark white matter, bright CSF)
        self.tables = torch.stack([t1, t2, torch.where(brain, 1.0 - t1, 0.0)])
        self.control = tuple(max(2, math.ceil(c / settings.deform_spacing)) for c in self.crop)
        self.integration = tuple(max(2, math.ceil(c / 4)) for c in self.crop)

    def __len__(self) -> int:
        return len(self.maps)

    def pair(self, seed: int, view: bool = False) -> TrainingPair:
        """One sample: fields (1, X, Y, Z) (a batch of one, unbatched)."""
        batch = self.batch([seed], view)
        return TrainingPair(*(None if t is None else t[0] for t in (batch.moving, batch.fixed, batch.moving_labels,
                                                                     batch.fixed_labels, batch.fixed_view)))

    def batch(self, seeds: Sequence[int], view: bool = False) -> TrainingPair:
        """Pairs of ``seeds``: images (B, 1, X, Y, Z) float32 z-scored, labels (B, 1, X, Y, Z) int64
        (original label values); ``view``: also the fixed labels under a third, independent contrast."""
        draws = [self._draw(int(seed), view) for seed in seeds]
        labels = self._labels(draws)  # (2B, 1, X, Y, Z) compact: moving then fixed of each pair
        per_pair = 3 if view else 2
        sides = [0, 1, 1][:per_pair]
        looks = [look for d in draws for look in d.looks]
        rendered = self._images(labels.view(len(draws), 2, *labels.shape[1:])[:, sides].flatten(0, 1), looks)
        rendered = rendered.view(len(draws), per_pair, *rendered.shape[1:])
        labels = self.values[labels.view(len(draws), 2, *labels.shape[1:])]
        return TrainingPair(rendered[:, 0], rendered[:, 1], labels[:, 0], labels[:, 1], rendered[:, 2] if view else None)

    # --- draws (CPU) --------------------------------------------------------------------------
    def _draw(self, seed: int, view: bool) -> _Draw:
        gen = torch.Generator().manual_seed(seed)
        first, second = (int(i) for i in torch.randint(len(self.maps), (2,), generator=gen))
        jitter = torch.randint(-CROP_JITTER, CROP_JITTER + 1, (3,), generator=gen).tolist()
        start = tuple(min(max(0, (n - c) // 2 + j), n - c) for n, c, j in zip(self.shape, self.crop, jitter))
        sides = (self._side(first, gen), self._side(second, gen))
        looks = tuple(self._look(gen) for _ in range(3 if view else 2))
        return _Draw(start, sides, looks)  # type: ignore[arg-type]

    def _uniform(self, gen: torch.Generator, low: float, high: float, size=()) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=gen)

    def _side(self, index: int, gen: torch.Generator) -> _Side:
        s = self.settings
        axis = torch.randn(3, generator=gen)
        axis = axis / axis.norm().clamp_min(1e-8)
        angle = math.radians(float(self._uniform(gen, -s.rotate_degrees, s.rotate_degrees)))
        k = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        rotation = torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        matrix = rotation @ torch.diag(1.0 + self._uniform(gen, -s.scale, s.scale, (3,)))
        shift = self._uniform(gen, -s.shift, s.shift, (3,))
        velocity = torch.randn(3, *self.control, generator=gen) * float(self._uniform(gen, 0.0, s.deform))
        return _Side(index, matrix, shift, velocity)

    def _look(self, gen: torch.Generator) -> _Look:
        s = self.settings
        means, stds = self._contrast(gen)
        scalars = torch.rand(6, generator=gen).tolist()
        log_bias = torch.randn(1, 4, 4, 4, generator=gen) * (scalars[1] * s.bias)
        gamma = math.exp(float(torch.randn((), generator=gen)) * s.gamma)
        seed = int(torch.randint(2**62, (), generator=gen))
        return _Look(means, stds, blur=scalars[0] * s.blur, log_bias=log_bias, gamma=gamma, axis=min(int(scalars[2] * 3), 2),
                     factor=1.0 + scalars[3] * (s.lowres - 1.0), noise=scalars[4] * s.noise,
                     keep_noise=scalars[5] < s.background_noise, seed=seed)

    def _contrast(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's (means, stds) per compact label, background 0: with probability 1 - ``presets``
        every mean uniform in [0, 1] (any order of tissues), else a realistic table (T1, T2-like or
        inverted T1, equally likely) jittered by up to ``preset_jitter`` per label. The same draws
        are made on every branch."""
        s = self.settings
        uniform, jitter = torch.rand(2, len(self.labels), generator=gen)
        stds = torch.rand(len(self.labels), generator=gen) * s.texture
        choice, table = torch.rand(2, generator=gen).tolist()
        if choice < s.presets:
            means = (self.tables[min(int(table * len(self.tables)), len(self.tables) - 1)] + s.preset_jitter * (2 * jitter - 1)).clamp(0, 1)
        else:
            means = uniform
        means[0] = stds[0] = 0.0
        return means, stds

    # --- synthesis (device, batched) ----------------------------------------------------------
    def _labels(self, draws: Sequence[_Draw]) -> torch.Tensor:
        """Every side's randomly deformed crop (compact indices), (2B, 1, X, Y, Z) int64."""
        dev, sides = self.device, [side for d in draws for side in d.sides]
        velocity = torch.stack([side.velocity for side in sides]).to(dev)
        # the coarse velocity is in crop voxels: into voxels of the integration grid, integrate there, bring back
        scale = torch.tensor([(q - 1) / (c - 1) for q, c in zip(self.integration, self.crop)], device=dev).view(1, 3, 1, 1, 1)
        velocity = F.interpolate(velocity, size=self.integration, mode="trilinear", align_corners=True) * scale
        flow = resize(integrate(velocity, steps=5), self.crop, align_corners=True)
        starts = torch.tensor([d.start for d in draws for _ in d.sides], dtype=torch.float32, device=dev)
        axes = [torch.arange(c, dtype=torch.float32, device=dev) for c in self.crop]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None] + flow + starts[:, :, None, None, None]
        centre = (torch.tensor(self.shape, dtype=torch.float32, device=dev) - 1) / 2
        matrix = torch.stack([side.matrix for side in sides]).to(dev)
        shift = torch.stack([side.shift for side in sides]).to(dev)
        points = torch.einsum("bij,bj...->bi...", matrix, points - centre.view(1, 3, 1, 1, 1)) + (centre + shift).view(-1, 3, 1, 1, 1)
        maps = self.maps[torch.tensor([side.index for side in sides], device=dev)]
        return sample_at(maps, points.permute(0, 2, 3, 4, 1), mode="nearest", padding="zeros").round().long()

    def _images(self, labels: torch.Tensor, looks: Sequence[_Look]) -> torch.Tensor:
        """Images (N, 1, X, Y, Z) of ``labels`` (N, 1, X, Y, Z) compact, one ``_Look`` each, z-scored."""
        dev, n = self.device, len(looks)
        means = torch.stack([look.means for look in looks]).to(dev)
        stds = torch.stack([look.stds for look in looks]).to(dev)
        flat = labels.flatten(1)
        noise = torch.stack([torch.randn((2, *self.crop), generator=torch.Generator(device=dev).manual_seed(look.seed), device=dev)
                             for look in looks])  # (N, 2, X, Y, Z): texture, additive noise
        image = means.gather(1, flat).view_as(labels) + stds.gather(1, flat).view_as(labels) * noise[:, :1]
        image = _blur(image, [[look.blur] * 3 for look in looks])
        log_bias = F.interpolate(torch.stack([look.log_bias for look in looks]).to(dev), size=self.crop, mode="trilinear", align_corners=True)
        image = image * torch.exp(log_bias)
        image = image.clamp_min(0.0) / image.flatten(1).amax(1).clamp_min(1e-6).view(n, 1, 1, 1, 1)
        image = image ** torch.tensor([look.gamma for look in looks], device=dev).view(n, 1, 1, 1, 1)
        sigmas = [[0.0] * 3 for _ in looks]
        for sigma, look in zip(sigmas, looks):
            if look.factor > 1.05:
                sigma[look.axis] = math.sqrt(look.factor**2 - 1) / 2.355
        image = _blur(image, sigmas)
        image = torch.cat([_lower_resolution(image[i : i + 1], look.axis, look.factor) for i, look in enumerate(looks)])
        image = image + noise[:, 1:] * torch.tensor([look.noise for look in looks], device=dev).view(n, 1, 1, 1, 1)
        brain = labels > 0
        keep = torch.tensor([look.keep_noise for look in looks], device=dev).view(n, 1, 1, 1, 1)
        image = torch.where(brain | keep, image, torch.zeros_like(image)).clamp_min(0.0)
        return _zscore(image, brain)


def _zscore(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each image (N, 1, X, Y, Z) minus the mean over ``mask``, divided by the std there (the whole
    image where a mask is empty or flat)."""
    weights = mask.to(image.dtype)
    empty = weights.flatten(1).sum(1) == 0
    weights = torch.where(empty.view(-1, 1, 1, 1, 1), torch.ones_like(weights), weights)
    count = weights.flatten(1).sum(1)
    mean = (image * weights).flatten(1).sum(1) / count
    centred = image - mean.view(-1, 1, 1, 1, 1)
    std = ((centred**2 * weights).flatten(1).sum(1) / count).sqrt()
    return centred / std.clamp_min(1e-6).view(-1, 1, 1, 1, 1)


def _blur(image: torch.Tensor, sigmas: Sequence[Sequence[float]]) -> torch.Tensor:
    """Each image of (N, 1, X, Y, Z) blurred by its own row of ``sigmas`` (voxels per axis; < 0.1: none)."""
    return gaussian_blur(image.transpose(0, 1), [[s if s >= 0.1 else 0.0 for s in row] for row in sigmas]).transpose(0, 1)


def _lower_resolution(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """(1, 1, X, Y, Z) resampled to ``factor`` times fewer voxels along ``axis`` and back (trilinear)."""
    if factor <= 1.05:
        return image
    low = list(image.shape[2:])
    low[axis] = max(2, round(low[axis] / factor))
    size = image.shape[2:]
    return F.interpolate(F.interpolate(image, size=low, mode="trilinear", align_corners=True), size=size, mode="trilinear", align_corners=True)
