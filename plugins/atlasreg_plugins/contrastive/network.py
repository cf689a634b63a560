"""The contrastive registration network (Contrastive Registration for Unsupervised Medical Image
Segmentation, section 3), rebuilt so that its base is at least as strong as VoxelMorph's:

* a **weight-shared (Siamese) encoder** applied to the moving image x and the fixed image y alone:
  conv 3^3 stride 2 then ``stem_convs - 1`` convs at 1/2 resolution, ``stem_channels`` features;
  these per-image features are what the contrastive term acts on;
* **early fusion**: at 1/2 resolution the two feature maps meet, concatenated with their
  element-wise product (a zero-displacement correlation), and a U-Net (``unet_channels`` per
  level, stride-2 down, ``upsample2`` up, skip connections) estimates the approximate posterior
  q(z | y; x) = N(mean, diag(exp(log_var))) of a stationary velocity field z on the 1/2 grid;
* **instance normalisation** (affine) after every convolution: batch statistics of two cropped
  pairs are not those of one whole volume at inference, instance statistics are;
* **aligned decoding**: every upsampling is ``atlasreg.flow.upsample2``, which puts coarse voxel i
  at fine voxel 2 i (where the stride-2 convolution computed it); ``align_corners=True`` on a
  stride-2 grid was up to a voxel off at the far faces;
* z (in 1/2-grid voxels) becomes the full-resolution velocity ``upsample2(z) * 2``; its
  exponential (scaling and squaring) is the diffeomorphic displacement.

Contrast heads (``contrast``): ``"cross"`` projects (a small 1x1 MLP) the encoder's features of the
fixed image and of ``view`` (the same label map rendered under another contrast: exact voxel
correspondence) at ``points`` locations drawn in the brain (``labels`` > 0), for a per-location
InfoNCE whose negatives are the other locations of other structures: the encoder learns features
that name anatomy whatever the contrast, and the flow plays no part. ``"global"`` is the paper's (global average pooling of each image's
encoder features -> a linear projection, InfoNCE across the batch); ``"dense"`` projects the fixed
image's features at ``points`` sampled brain locations and the moving image's features warped by
the current flow at the same locations (a small 1x1 MLP), for a per-location InfoNCE: the
gradient reaches the encoder and the flow. ``"none"`` builds no head.

``forward(moving, fixed, sample=False, contrast=False)`` returns ``velocity`` (B, 3, X, Y, Z, full
voxels: what instance optimisation can optimise directly), ``flow`` (its exponential, the
displacement), ``mean`` / ``log_var`` (1/2 grid), and with ``contrast=True`` the head's
projections (``"cross"`` also needs ``view`` and ``labels``, (B, 1, X, Y, Z) like ``fixed``).
Everything the loss needs is computed inside ``forward`` (one call under DDP).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from atlasreg.errors import AtlasregError
from atlasreg.flow import integrate, upsample2, warp

__all__ = ["ContrastiveRegNet", "CONTRASTS", "sample_anchors", "sample_points"]

LEAKY_SLOPE = 0.2
LOG_VAR_BIAS = -10.0
CONTRASTS = ("cross", "dense", "global", "none")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


class ContrastiveRegNet(nn.Module):
    def __init__(
        self,
        stem_channels: int = 16,
        stem_convs: int = 2,
        unet_channels: Sequence[int] = (32, 32, 64),
        head_channels: int = 16,
        contrast: str = "dense",
        proj_dim: int = 16,
        points: int = 256,
        int_steps: int = 7,
        int_downsize: int = 2,
    ):
        super().__init__()
        if contrast not in CONTRASTS:
            raise AtlasregError(f"ContrastiveRegNet: contrast {contrast!r}: choose one of {', '.join(CONTRASTS)}")
        if not unet_channels or stem_convs < 1:
            raise AtlasregError("ContrastiveRegNet: at least one U-Net level and one stem convolution are needed")
        self.contrast, self.points = contrast, int(points)
        self.int_steps, self.int_downsize = int(int_steps), int(int_downsize)
        self.encoder = nn.Sequential(_conv(1, stem_channels, 2), *[_conv(stem_channels, stem_channels) for _ in range(stem_convs - 1)])
        fused = 3 * stem_channels
        self.down = nn.ModuleList()
        cin = fused
        for cout in unet_channels:
            self.down.append(_conv(cin, cout, 2))
            cin = cout
        self.up = nn.ModuleList()  # one level up per skip: the U-Net levels, then the fused 1/2 map
        skips = list(reversed(unet_channels[:-1])) + [fused]
        for skip, cout in zip(skips, list(reversed(unet_channels[:-1])) + [unet_channels[0]]):
            self.up.append(_conv(cin + skip, cout))
            cin = cout
        self.tail = _conv(cin, head_channels)
        self.mean_head = nn.Conv3d(head_channels, 3, 3, padding=1)
        self.log_var_head = nn.Conv3d(head_channels, 3, 3, padding=1)
        if contrast == "global":
            self.projection = nn.Linear(stem_channels, proj_dim)
        elif contrast in ("cross", "dense"):
            self.projection = nn.Sequential(nn.Linear(stem_channels, 2 * stem_channels), nn.ReLU(inplace=True),
                                            nn.Linear(2 * stem_channels, proj_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """He-normal conv/linear weights, zero biases; the mean head ~ N(0, 1e-5) (a near-identity
        start), the log-variance head ~ N(0, 1e-10) with bias -10 (sigma ~ 0.007 voxel)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.mean_head.weight, 0.0, 1e-5)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.normal_(self.log_var_head.weight, 0.0, 1e-10)
        nn.init.constant_(self.log_var_head.bias, LOG_VAR_BIAS)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, sample: bool = False, contrast: bool = False,
                view: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if moving.shape != fixed.shape:
            raise ValueError(f"ContrastiveRegNet: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ")
        cross = contrast and self.contrast == "cross"
        if cross and (view is None or labels is None or view.shape != fixed.shape or labels.shape != fixed.shape):
            raise ValueError("ContrastiveRegNet: contrast 'cross' needs a view and labels shaped like the fixed image")
        batch, shape = moving.shape[0], moving.shape[2:]
        features = self.encoder(torch.cat([moving, fixed, view] if cross else [moving, fixed], dim=0))
        feat_moving, feat_fixed = features[:batch], features[batch : 2 * batch]
        x = torch.cat([feat_moving, feat_fixed, feat_moving * feat_fixed], dim=1)
        skips = [x]
        for conv in self.down:
            x = conv(x)
            skips.append(x)
        for conv, skip in zip(self.up, reversed(skips[:-1])):
            x = conv(torch.cat([upsample2(x, skip.shape[2:]), skip], dim=1))
        x = self.tail(x)
        mean, log_var = self.mean_head(x), self.log_var_head(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if sample else mean
        velocity = upsample2(z, shape) * 2.0
        flow = self.flow(velocity)
        out = {"velocity": velocity, "flow": flow, "mean": mean, "log_var": log_var}
        if cross:  # fine voxel 2 i is coarse voxel i; anchors in the brain only
            coarse_labels = labels[:, 0, ::2, ::2, ::2]
            index = sample_anchors(coarse_labels > 0, self.points)
            out["points_fixed"] = self.projection(_gather(feat_fixed, index))
            out["points_view"] = self.projection(_gather(features[2 * batch :], index))
            out["points_labels"] = torch.gather(coarse_labels.flatten(1), 1, index)
        elif contrast and self.contrast == "global":
            out["proj_moving"] = self.projection(feat_moving.mean(dim=(2, 3, 4)))
            out["proj_fixed"] = self.projection(feat_fixed.mean(dim=(2, 3, 4)))
        elif contrast and self.contrast == "dense":
            half_flow = flow[:, :, ::2, ::2, ::2] / 2.0  # fine voxel 2 i is coarse voxel i
            warped = warp(feat_moving, half_flow)
            index = sample_points(fixed[:, 0, ::2, ::2, ::2] != 0, self.points)
            out["points_fixed"] = self.projection(_gather(feat_fixed, index))
            out["points_moving"] = self.projection(_gather(warped, index))
        return out

    def flow(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement (voxels) of exp(velocity): scaling and squaring, ``int_steps`` steps on a grid
        ``int_downsize`` times coarser."""
        return integrate(velocity, self.int_steps, self.int_downsize)


def _gather(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) features at flat voxel indices (B, N) -> (B, N, C)."""
    flat = features.flatten(2)
    return torch.gather(flat, 2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def sample_anchors(mask: torch.Tensor, points: int) -> torch.Tensor:
    """Flat voxel indices (B, points) drawn uniformly (with replacement) in ``mask`` (B, X, Y, Z; the
    whole grid where a mask is empty)."""
    weights = mask.flatten(1).float()
    weights[weights.sum(1) == 0] = 1.0
    return torch.multinomial(weights, points, replacement=True)


def sample_points(mask: torch.Tensor, points: int) -> torch.Tensor:
    """Flat voxel indices (B, points) for the dense contrast: half drawn uniformly in ``mask`` (B, X,
    Y, Z; the whole grid where a mask is empty), half one to two voxels from those (near negatives)."""
    batch, shape = mask.shape[0], mask.shape[1:]
    first = sample_anchors(mask, points - points // 2)
    coords = torch.stack(torch.unravel_index(first, shape), dim=-1)  # (B, anchors, 3)
    offsets = torch.randint(-2, 3, (batch, points // 2, 3), device=mask.device)
    offsets[(offsets == 0).all(-1), 0] = 1  # never the anchor itself
    near = coords[:, : points // 2] + offsets
    for axis, n in enumerate(shape):
        near[..., axis] = near[..., axis].clamp(0, n - 1)
    second = (near[..., 0] * shape[1] + near[..., 1]) * shape[2] + near[..., 2]
    return torch.cat([first, second], dim=1)
