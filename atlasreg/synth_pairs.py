"""Registration training pairs synthesized from label maps, in the style of SynthMorph (Hoffmann et
al., 2022), in torch so that a CPU keeps up with training.

Each pair takes two label maps already on one working grid (affinely pre-aligned), and for each
side draws: a rigid-plus-scale affine jitter (built in voxel space of the isotropic grid, so it is
a true rotation) composed with a smooth random diffeomorphism (a coarse random velocity field,
integrated), labels read by nearest neighbour; then the side's OWN contrast (``_contrast``: every
label's mean intensity uniform at random, any order of tissues, or a realistic table, T1-like,
T2-like or inverted T1 (dark white matter, bright CSF), jittered per label), texture, a smooth
multiplicative bias field, blur, a gamma curve, a lower acquisition resolution along a random
axis, noise, and a brain mask (background 0, sometimes with clipped noise as in
``atlasreg.synth``). The two images of a pair share no contrast: training compares their labels
(``atlasreg.recipe.label_overlap``), not their intensities. On request the fixed label map is
rendered once more under a third, independent contrast (``fixed_view``: the same anatomy voxel for
voxel, for a cross-contrast term). Images are z-scored by ``atlasreg.volume.zscore``, as
``atlasreg.engine.grid.align_pair`` does at inference.

Everything is drawn from one ``torch.Generator`` seeded per pair: the same seed gives the same
pair, byte for byte, whatever else runs (one process or many); the view is drawn last, so asking
for it leaves the pair itself unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AtlasregError
from .flow import integrate
from .recipe import TrainingPair
from .synth import preset_means
from .volume import image as image_volume, zscore

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


def _normalise(image: torch.Tensor) -> torch.Tensor:
    """``atlasreg.volume.zscore`` (what ``align_pair`` feeds a network at inference), on a (1, X, Y, Z) tensor."""
    volume = image_volume(image[0].numpy(), np.eye(4))
    return torch.from_numpy(zscore(volume).array)[None]


class SynthPairs:
    """``TrainingPair`` samples (moving, fixed, their labels, optionally ``fixed_view``) of shape ``crop``
    from label maps on one grid."""

    def __init__(self, maps: Sequence[np.ndarray], crop: Sequence[int], settings: SynthSettings = SynthSettings()) -> None:
        if not maps:
            raise AtlasregError("synthesis needs at least one label map")
        shapes = {m.shape for m in maps}
        if len(shapes) != 1:
            raise AtlasregError(f"label maps must share one grid, got shapes {sorted(shapes)}")
        self.shape = tuple(maps[0].shape)
        self.crop = tuple(int(c) for c in crop)
        if any(c > n for c, n in zip(self.crop, self.shape)):
            raise AtlasregError(f"crop {self.crop} is larger than the grid {self.shape}")
        self.labels = np.unique(np.concatenate([[0], *(np.unique(m) for m in maps)]))  # index 0 = background
        lookup = np.zeros(int(self.labels.max()) + 1, np.int64)
        lookup[self.labels] = np.arange(len(self.labels))
        # compact label indices (0 = background), as float for grid_sample (nearest keeps them whole)
        self.maps = [torch.from_numpy(lookup[m].astype(np.float32))[None, None] for m in maps]
        self.settings = settings
        t1 = torch.from_numpy(preset_means(self.labels, "t1")) / 150.0
        t2 = torch.from_numpy(preset_means(self.labels, "t2")) / 150.0
        brain = torch.from_numpy(self.labels > 0)
        # realistic tissue tables on a 0-1 scale: T1, T2-like, inverted T1 (dark white matter, bright CSF)
        self.tables = torch.stack([t1, t2, torch.where(brain, 1.0 - t1, 0.0)])

    def __len__(self) -> int:
        return len(self.maps)

    def pair(self, seed: int, view: bool = False) -> TrainingPair:
        """Images (1, X, Y, Z) float32 z-scored, labels (1, X, Y, Z) int64 (original label values);
        ``view``: also the fixed labels rendered under a third, independent contrast."""
        gen = torch.Generator().manual_seed(int(seed))
        first, second = (int(i) for i in torch.randint(len(self.maps), (2,), generator=gen))
        start = [min(max(0, (n - c) // 2 + int(torch.randint(-CROP_JITTER, CROP_JITTER + 1, (1,), generator=gen))), n - c)
                 for n, c in zip(self.shape, self.crop)]  # near the centre, where the brain is
        moving_labels = self._labels(self.maps[first], start, gen)
        fixed_labels = self._labels(self.maps[second], start, gen)
        moving = self._image(moving_labels, *self._contrast(gen), gen)
        fixed = self._image(fixed_labels, *self._contrast(gen), gen)
        fixed_view = self._image(fixed_labels, *self._contrast(gen), gen) if view else None
        table = torch.from_numpy(self.labels.astype(np.int64))
        return TrainingPair(moving, fixed, table[moving_labels], table[fixed_labels], fixed_view)

    def _contrast(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's (means, stds) per compact label, background 0: with probability 1 - ``presets``
        every mean uniform in [0, 1] (any order of tissues), else a realistic table (T1, T2-like or
        inverted T1, equally likely) jittered by up to ``preset_jitter`` per label. The same draws
        are made on every branch."""
        s = self.settings
        uniform, jitter = torch.rand(2, len(self.labels), generator=gen)
        stds = torch.rand(len(self.labels), generator=gen) * s.texture
        choice, table = torch.rand(2, generator=gen)
        if float(choice) < s.presets:
            means = (self.tables[min(int(table * len(self.tables)), len(self.tables) - 1)] + s.preset_jitter * (2 * jitter - 1)).clamp(0, 1)
        else:
            means = uniform
        means[0] = stds[0] = 0.0
        return means, stds

    def _uniform(self, gen: torch.Generator, low: float, high: float, size=()) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=gen)

    def _labels(self, labels: torch.Tensor, start: Sequence[int], gen: torch.Generator) -> torch.Tensor:
        """A randomly deformed crop of ``labels`` (compact indices), (1, X, Y, Z) int64."""
        s = self.settings
        axis = torch.randn(3, generator=gen)
        axis = axis / axis.norm().clamp_min(1e-8)
        angle = math.radians(float(self._uniform(gen, -s.rotate_degrees, s.rotate_degrees)))
        k = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        rotation = torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        matrix = rotation @ torch.diag(1.0 + self._uniform(gen, -s.scale, s.scale, (3,)))
        shift = self._uniform(gen, -s.shift, s.shift, (3,))
        coarse = [max(2, math.ceil(c / s.deform_spacing)) for c in self.crop]
        velocity = torch.randn(1, 3, *coarse, generator=gen) * float(self._uniform(gen, 0.0, s.deform))
        velocity = F.interpolate(velocity, size=self.crop, mode="trilinear", align_corners=True)
        flow = integrate(velocity, steps=5, downsize=2)[0]
        axes = [torch.arange(c, dtype=torch.float32) + o for c, o in zip(self.crop, start)]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij")) + flow  # (3, X, Y, Z) grid voxels
        centre = (torch.tensor(self.shape, dtype=torch.float32) - 1) / 2
        points = torch.einsum("ij,j...->i...", matrix, points - centre[:, None, None, None]) + (centre + shift)[:, None, None, None]
        size = torch.tensor(self.shape, dtype=torch.float32)[:, None, None, None]
        grid = (points * 2.0 / (size - 1) - 1.0).permute(1, 2, 3, 0).flip(-1)[None]
        sampled = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        return sampled[0].round().long()

    def _image(self, labels: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = self.settings
        image = means[labels] + stds[labels] * torch.randn(labels.shape, generator=gen)
        image = _blur(image[None], float(self._uniform(gen, 0.0, s.blur)))[0]
        log_bias = torch.randn(1, 1, 4, 4, 4, generator=gen) * float(self._uniform(gen, 0.0, s.bias))
        image = image * torch.exp(F.interpolate(log_bias, size=self.crop, mode="trilinear", align_corners=True)[0])
        image = image.clamp_min(0.0) / image.max().clamp_min(1e-6)
        image = image ** math.exp(float(torch.randn((), generator=gen)) * s.gamma)
        axis = int(torch.randint(3, (1,), generator=gen))
        factor = float(self._uniform(gen, 1.0, s.lowres))
        if factor > 1.05:
            image = _blur(image[None], math.sqrt(factor**2 - 1) / 2.355, axes=(axis,))[0]
            low = list(self.crop)
            low[axis] = max(2, round(self.crop[axis] / factor))
            image = F.interpolate(F.interpolate(image[None], size=low, mode="trilinear", align_corners=True),
                                  size=self.crop, mode="trilinear", align_corners=True)[0]
        image = image + torch.randn(image.shape, generator=gen) * float(self._uniform(gen, 0.0, s.noise))
        brain = labels > 0
        keep_noise = float(torch.rand((), generator=gen)) < s.background_noise
        image = torch.where(brain | keep_noise, image, torch.zeros_like(image)).clamp_min(0.0)
        return _normalise(image)


def _blur(image: torch.Tensor, sigma: float, axes: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, X, Y, Z) tensor, std ``sigma`` voxels along ``axes``."""
    if sigma < 0.1:
        return image
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    for axis in axes:
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = radius
        image = F.conv3d(F.pad(image, _pad_spec(padding), mode="replicate"), kernel.view(shape))
    return image


def _pad_spec(padding: Sequence[int]) -> tuple[int, ...]:
    """F.pad's (last axis first, both sides) spec for per-axis paddings of X, Y, Z."""
    return tuple(p for axis in (2, 1, 0) for p in (padding[axis], padding[axis]))
