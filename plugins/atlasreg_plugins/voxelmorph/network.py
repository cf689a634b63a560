"""VoxelMorph baseline (Balakrishnan et al., TMI 2019; diffeomorphic variant: Dalca et al., MICCAI
2018 / MedIA 2019), written from the published architecture.

A U-Net on the concatenated pair (moving, fixed) predicts a stationary velocity field; its
exponential (scaling and squaring) is the displacement. Convolutions are 3^3 with LeakyReLU(0.2),
no normalisation layers (as published).

Layout for ``enc=(16, 32, 32, 32)``, ``dec=(32, 32, 32, 32, 32, 16, 16)`` (the "vm2" widths):

* encoder: one conv stride 2 per entry of ``enc``: features at 1/2, 1/4, 1/8, 1/16 resolution;
* decoder: ``dec[0]`` at 1/16; then for each finer encoder level: upsample x2 (``upsample2``: coarse
  voxel i lands on fine voxel 2 i, where the stride-2 convolution computed it),
  concatenate the encoder features of that level, conv (``dec[1..3]``, ending at 1/2);
* the remaining ``dec`` entries (``dec[4:]`` = 32, 16, 16) are convs at 1/2 resolution, then the
  velocity head (conv 3^3 to 3 channels, in 1/2-grid voxels, weights ~ N(0, 1e-5), bias 0),
  brought to the input grid by ``upsample2`` and doubled (full-resolution voxels).

Deviation (documented, for speed): in the published full-size vm2 network the last two convs
(16, 16) run at full resolution after a final upsampling and a skip connection to the input; on a
2-core CPU those two full-resolution convs alone take > 1.5 s at 96x112x96, so by default
(``full_size=False``) they stay at half resolution, as in the probabilistic diffeomorphic
VoxelMorph (its decoder also stops at half resolution). ``full_size=True`` restores the
published layout (upsample, concatenate the 2-channel input, ``dec[5:]`` at full resolution).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from atlasreg.errors import AtlasregError
from atlasreg.flow import integrate, upsample2

__all__ = ["VoxelMorphNet"]

LEAKY_SLOPE = 0.2


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


class VoxelMorphNet(nn.Module):
    """U-Net on the concatenated (moving, fixed) pair predicting a stationary velocity field.

    ``forward(moving, fixed)`` with ``(B, in_channels, X, Y, Z)`` images returns
    ``{"velocity": (B, 3, X, Y, Z), "flow": its exponential}`` in voxel units; ``flow(velocity)``
    integrates a velocity (what instance optimisation needs when it optimises the velocity itself).
    ``int_steps=0`` makes the velocity the displacement itself (plain VoxelMorph).
    """

    def __init__(
        self,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        int_steps: int = 7,
        int_downsize: int = 2,
        in_channels: int = 1,
        full_size: bool = False,
    ):
        super().__init__()
        enc = tuple(int(c) for c in enc)
        dec = tuple(int(c) for c in dec)
        if not enc:
            raise AtlasregError("VoxelMorphNet: at least one encoder level is needed")
        if len(dec) < len(enc) + (2 if full_size else 0):
            raise AtlasregError(f"VoxelMorphNet: dec needs at least {len(enc) + (2 if full_size else 0)} entries, got {len(dec)}")
        self.int_steps = int(int_steps)
        self.int_downsize = int(int_downsize)
        self.full_size = bool(full_size)
        self.encoder = nn.ModuleList()
        cin = 2 * in_channels
        for cout in enc:
            self.encoder.append(_conv(cin, cout, stride=2))
            cin = cout
        # decoder levels: coarsest (no skip) then one per finer encoder level
        self.up = nn.ModuleList([_conv(enc[-1], dec[0])])
        cin = dec[0]
        for i, skip in enumerate(reversed(enc[:-1]), start=1):
            self.up.append(_conv(cin + skip, dec[i]))
            cin = dec[i]
        rest = list(dec[len(enc):])
        # full_size: the last conv before the final upsampling stays at 1/2, the rest go to full res
        n_half = len(rest) - 2 if full_size else len(rest)
        half, full = rest[:n_half], rest[n_half:]
        self.tail = nn.Sequential()
        for cout in half:
            self.tail.append(_conv(cin, cout))
            cin = cout
        self.full_res = nn.Sequential()
        if full_size:
            cin += 2 * in_channels
            for cout in full:
                self.full_res.append(_conv(cin, cout))
                cin = cout
        self.flow_head = nn.Conv3d(cin, 3, 3, padding=1)
        nn.init.normal_(self.flow_head.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow_head.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        if moving.shape != fixed.shape:
            raise ValueError(f"VoxelMorphNet: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ")
        pair = torch.cat([moving, fixed], dim=1)
        skips = []
        x = pair
        for conv in self.encoder:
            x = conv(x)
            skips.append(x)
        x = self.up[0](x)
        for conv, skip in zip(self.up[1:], reversed(skips[:-1])):
            x = conv(torch.cat([upsample2(x, skip.shape[2:]), skip], dim=1))
        x = self.tail(x)
        if self.full_size:
            x = self.full_res(torch.cat([upsample2(x, pair.shape[2:]), pair], dim=1))
        velocity = self.flow_head(x)
        if not self.full_size:
            velocity = upsample2(velocity, moving.shape[2:]) * 2.0
        return {"velocity": velocity, "flow": self.flow(velocity)}

    def flow(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement (voxels) of exp(velocity): scaling and squaring with ``int_steps`` steps, on a
        grid ``int_downsize`` times coarser (the decoder's own output grid at the default 2)."""
        return integrate(velocity, self.int_steps, self.int_downsize)
