"""What one training step of every learned backend sees, and the data term they share on label maps.

A ``TrainingPair`` holds a batch of moving/fixed images (B, 1, X, Y, Z) and, for pairs synthesized
from label maps (``--synth``), their labels and the fixed label map rendered a second time under an
independent contrast (``fixed_view``, for a cross-contrast term). With labels, the data term is
``label_overlap``: a soft Dice of the moving labels' one-hot, warped by the predicted flow with
linear interpolation, against the fixed labels' one-hot (SynthMorph, Hoffmann et al. 2022). It
does not depend on intensities, so a pair whose two images have unrelated contrasts trains the
network as well as one that shares a contrast; labels are needed at training time only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from .flow import warp

__all__ = ["TrainingPair", "label_overlap"]


@dataclass
class TrainingPair:
    """Images (B, 1, X, Y, Z) float; labels (B, 1, X, Y, Z) int64 (original label values) or None."""

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_labels: torch.Tensor | None = None
    fixed_labels: torch.Tensor | None = None
    fixed_view: torch.Tensor | None = None  # the fixed labels rendered under a second, independent contrast

    @classmethod
    def stack(cls, samples: Sequence["TrainingPair"], device: str | torch.device) -> "TrainingPair":
        """One batch on ``device`` from single samples (each field (1, X, Y, Z) or None in all of them)."""
        values = {}
        for field in fields(cls):
            parts = [getattr(s, field.name) for s in samples]
            values[field.name] = None if parts[0] is None else torch.stack(parts).to(device)
        return cls(**values)


def label_overlap(moving_labels: torch.Tensor, fixed_labels: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the structures (labels > 0) present in either map of each pair.

    ``moving_labels`` / ``fixed_labels``: (B, 1, X, Y, Z) integers; ``flow``: (B, 3, X, Y, Z) voxels.
    The moving one-hot is warped like an image (``warped(p) = onehot(p + flow(p))``, trilinear), so
    the gradient reaches the flow. Each pair's score is the mean over its own structures.
    """
    values = torch.unique(torch.cat([moving_labels.flatten(), fixed_labels.flatten()]))
    values = values[values > 0].view(1, -1, 1, 1, 1)
    if values.numel() == 0:
        return flow.sum() * 0.0  # no structure to align: no signal (keeps the graph for DDP)
    moving = warp((moving_labels == values).to(flow.dtype), flow)
    fixed = (fixed_labels == values).to(flow.dtype)
    overlap = (moving * fixed).flatten(2).sum(2)
    size = moving.flatten(2).sum(2) + fixed.flatten(2).sum(2)
    present = size > 0
    dice = 2.0 * overlap / size.clamp_min(1e-6)
    per_pair = (dice * present).sum(1) / present.sum(1).clamp_min(1)
    return 1.0 - per_pair.mean()
