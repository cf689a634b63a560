"""The contrastive registration network (Contrastive Registration for Unsupervised Medical Image
Segmentation, section 3): one weight-shared 3-D CNN encoder applied to the moving image x and the
fixed image y, a projection head for the contrastive loss, and one decoder estimating the
approximate posterior q(z | y; x) = N(mean, diag(exp(log_var))) of a stationary velocity field z,
whose exponential (scaling and squaring) is the diffeomorphic transformation phi_z.

Layout (``enc_channels=(16, 32, 32, 64)``, ``dec_channels=(64, 32, 32, 32, 16)``, input X*Y*Z):

* encoder, per level ``l``: conv 3^3 stride 2 -> BN -> LeakyReLU(0.2), then
  ``convs_per_level - 1`` conv 3^3 stride 1 -> BN -> LeakyReLU; features at 1/2, 1/4, 1/8, 1/16 of
  the input resolution with ``enc_channels[l]`` channels. There is no full-resolution layer: a
  3-D convolution at full resolution costs seconds on a CPU (see the decoder).
* projection head: global average pooling of the deepest feature map, then a fully connected
  layer (the paper's "fully-connected layer, as the projection layer") to ``proj_dim``; with
  ``proj_hidden`` set, a two-layer MLP (Linear -> ReLU -> Linear) as in SimCLR instead.
* decoder: at the coarsest level the two deepest feature maps are concatenated and convolved
  (``dec_channels[0]``); at every finer level the running map is upsampled (trilinear) to that
  level's size and concatenated with both encoder passes' features of that resolution, then
  conv -> BN -> LeakyReLU (``dec_channels[1..L-1]``). Remaining ``dec_channels`` are extra convs at
  the finest encoder level (1/2 resolution). Two 3^3 conv heads there give the velocity's
  ``mean`` and ``log_var`` (3 channels each), which are upsampled trilinearly to the input size.
  The heads output values in full-resolution voxel units directly (no vector rescaling on
  upsampling). Deviation for speed: the paper's decoder reaches the input resolution; here the
  last level is at 1/2 resolution and only the velocity statistics are interpolated to full
  resolution (as VoxelMorph-diff predicts its velocity at half resolution).

Initialisation (``init_weights``, applied in ``__init__``), following the paper's section 4.2:
He/Kaiming-normal convolution (and linear) weights, batch-norm weights ~ N(0, 0.1), every bias 0.
Then the heads: ``mean`` weights ~ N(0, 1e-5), bias 0 (an initial velocity of almost 0, i.e.
an almost identity transformation); ``log_var`` weights ~ N(0, 1e-10), bias -10 (initial
sigma = exp(-5) ~ 0.007 voxel, so a sample z is the mean up to a negligible perturbation).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from atlasreg.flow import integrate

__all__ = ["ContrastiveRegNet", "Encoder", "ProjectionHead", "Decoder"]

LEAKY_SLOPE = 0.2
LOG_VAR_BIAS = -10.0


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


class Encoder(nn.Module):
    """Multi-resolution 3-D CNN: level l at 1/2^(l+1) resolution with ``channels[l]`` features."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 32, 64), convs_per_level: int = 2):
        super().__init__()
        if not channels:
            raise ValueError("Encoder: at least one level is needed")
        if convs_per_level < 1:
            raise ValueError("Encoder: convs_per_level must be >= 1")
        self.channels = tuple(int(c) for c in channels)
        levels = []
        cin = in_channels
        for cout in self.channels:
            blocks = [_conv_block(cin, cout, stride=2)]
            blocks += [_conv_block(cout, cout) for _ in range(convs_per_level - 1)]
            levels.append(nn.Sequential(*blocks))
            cin = cout
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class ProjectionHead(nn.Module):
    """Global average pooling of a feature map, then FC (or FC-ReLU-FC) to a ``proj_dim`` vector."""

    def __init__(self, in_features: int, proj_dim: int = 64, hidden: int | None = None):
        super().__init__()
        if hidden:
            self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))
        else:
            self.fc = nn.Linear(in_features, proj_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=(2, 3, 4)))


class Decoder(nn.Module):
    """Coarse-to-fine decoder over the concatenated features of both encoder passes; mean/log_var heads."""

    def __init__(self, enc_channels: Sequence[int], dec_channels: Sequence[int]):
        super().__init__()
        enc_channels = tuple(enc_channels)
        dec_channels = tuple(int(c) for c in dec_channels)
        if len(dec_channels) < len(enc_channels):
            raise ValueError(
                f"Decoder: dec_channels needs at least one entry per encoder level ({len(enc_channels)}), got {len(dec_channels)}"
            )
        levels = []
        cin = 0
        for i, enc_c in enumerate(reversed(enc_channels)):  # coarsest first
            levels.append(_conv_block(cin + 2 * enc_c, dec_channels[i]))
            cin = dec_channels[i]
        self.levels = nn.ModuleList(levels)
        extra = []
        for cout in dec_channels[len(enc_channels):]:
            extra.append(_conv_block(cin, cout))
            cin = cout
        self.extra = nn.Sequential(*extra)
        self.mean_head = nn.Conv3d(cin, 3, 3, padding=1)
        self.log_var_head = nn.Conv3d(cin, 3, 3, padding=1)

    def forward(self, feats_moving: Sequence[torch.Tensor], feats_fixed: Sequence[torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        x = None
        for level, fm, ff in zip(self.levels, reversed(feats_moving), reversed(feats_fixed)):
            parts = [fm, ff]
            if x is not None:
                x = F.interpolate(x, size=fm.shape[2:], mode="trilinear", align_corners=False)
                parts.insert(0, x)
            x = level(torch.cat(parts, dim=1))
        x = self.extra(x)
        stats = torch.cat([self.mean_head(x), self.log_var_head(x)], dim=1)
        stats = F.interpolate(stats, size=tuple(size), mode="trilinear", align_corners=True)
        return stats[:, :3], stats[:, 3:]


class ContrastiveRegNet(nn.Module):
    """Weight-shared encoder + projection head + one probabilistic decoder (velocity field).

    ``forward(moving, fixed)`` takes ``(B, in_channels, X, Y, Z)`` images and returns a dict:

    * ``mean``, ``log_var``: ``(B, 3, X, Y, Z)``, the approximate posterior of the velocity z in
      voxel units (``log_var`` = log sigma^2 per voxel and component);
    * ``proj_moving``, ``proj_fixed``: ``(B, proj_dim)`` projections for the contrastive loss.

    ``sample(mean, log_var)`` draws z by reparameterisation, ``flow(velocity)`` integrates it
    (scaling and squaring, ``int_steps``) into a diffeomorphic displacement (B, 3, X, Y, Z);
    warp the moving image with ``atlasreg.flow.warp(moving, flow)``.

    Both images go through the one encoder in a single call (concatenated along the batch), so in
    training mode the batch-norm statistics are those of the moving and fixed images together.
    Training-mode batch norm needs more than one value per channel at the coarsest decoder level
    (B pairs x the voxels at 1/2^L resolution): with B = 1 and 4 levels, some axis must exceed
    16 voxels. An untrained network in eval mode (running statistics still mean 0, variance 1)
    shrinks its activations ~10x per layer because of the N(0, 0.1) batch-norm weights; this is
    harmless once the running statistics come from training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        enc_channels: Sequence[int] = (16, 32, 32, 64),
        dec_channels: Sequence[int] = (64, 32, 32, 32, 16),
        proj_dim: int = 64,
        int_steps: int = 7,
        int_downsize: int = 2,
        convs_per_level: int = 2,
        proj_hidden: int | None = None,
    ):
        super().__init__()
        self.int_steps = int(int_steps)
        self.int_downsize = int(int_downsize)
        self.encoder = Encoder(in_channels, enc_channels, convs_per_level)
        self.projection = ProjectionHead(self.encoder.channels[-1], proj_dim, proj_hidden)
        self.decoder = Decoder(self.encoder.channels, dec_channels)
        self.init_weights()

    def init_weights(self) -> None:
        """He-normal conv/linear weights, BN weights ~ N(0, 0.1), biases 0; then the head init."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.normal_(module.weight, 0.0, 0.1)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
        nn.init.normal_(self.decoder.mean_head.weight, 0.0, 1e-5)
        nn.init.zeros_(self.decoder.mean_head.bias)
        nn.init.normal_(self.decoder.log_var_head.weight, 0.0, 1e-10)
        nn.init.constant_(self.decoder.log_var_head.bias, LOG_VAR_BIAS)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        if moving.shape != fixed.shape:
            raise ValueError(f"ContrastiveRegNet: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ")
        batch = moving.shape[0]
        features = self.encoder(torch.cat([moving, fixed], dim=0))
        feats_moving = [f[:batch] for f in features]
        feats_fixed = [f[batch:] for f in features]
        proj = self.projection(features[-1])
        mean, log_var = self.decoder(feats_moving, feats_fixed, moving.shape[2:])
        return {"mean": mean, "log_var": log_var, "proj_moving": proj[:batch], "proj_fixed": proj[batch:]}

    @staticmethod
    def sample(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (reparameterisation trick)."""
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def flow(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement (voxels) of exp(velocity): scaling and squaring with ``int_steps`` steps, on a
        grid ``int_downsize`` times coarser (the decoder's own output grid at the default 2)."""
        return integrate(velocity, self.int_steps, self.int_downsize)
