"""Voting label fusion (numpy/scipy only): plain majority and locally weighted voting, both on
the core's ``atlasreg.fusion.vote`` (one label at a time: memory stays a few volumes; ties go to
the smallest label)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from atlasreg.fusion import majority_vote, validate_inputs, vote
from atlasreg.hookspecs import hookimpl
from atlasreg.plugin_api import Fusion, Option
from atlasreg.volume import Volume, zscore


class MajorityVote(Fusion):
    """Each voxel takes the label most atlases give it (ties → smallest label)."""

    name = "majority"
    description = "majority voting: each voxel takes the label most atlases give (ties: smallest label)"
    requires = ()
    deterministic = True
    options = {}

    def fuse(self, target: Volume, images: Sequence[Volume], labels: Sequence[Volume], **options: Any) -> Volume:
        validate_inputs(target, images, labels)
        return Volume(majority_vote(labels), target.affine, is_labels=True)


class WeightedVote(Fusion):
    """Locally weighted voting: an atlas counts more where its image looks like the target's.

    Intensities are z-scored per image (``atlasreg.volume.zscore``); d_i = Gaussian-smoothed
    (I_i - T)^2 (``sigma_mm``) is the local mean squared difference of atlas i, and its vote weighs
    w_i = exp(-(d_i - min_j d_j) / (h * mean(d))), mean over atlases and voxels. Subtracting the
    per-voxel minimum only rescales all votes at a voxel (same winner) but keeps the best atlas at
    weight 1, so no voxel loses every vote to underflow. Smaller ``h`` trusts the best-matching
    atlas more; large ``h`` tends to majority voting.
    """

    name = "weighted"
    description = "locally weighted voting: votes weighted by local image similarity to the target"
    requires = ()
    deterministic = True
    options = {
        "sigma_mm": Option(2.0, "Gaussian sigma (mm) of the local squared-difference window", minimum=0),
        "h": Option(0.5, "weight bandwidth, as a fraction of the mean local squared difference", minimum=0, exclusive_minimum=True),
    }

    def fuse(self, target: Volume, images: Sequence[Volume], labels: Sequence[Volume], **options: Any) -> Volume:
        validate_inputs(target, images, labels)
        sigma_mm, h = options["sigma_mm"], options["h"]
        sigma_vox = sigma_mm / target.spacing
        reference = zscore(target).array
        distances = np.stack(
            [gaussian_filter((zscore(volume).array - reference) ** 2, sigma_vox) for volume in images]
        )
        scale = h * float(distances.mean())
        if scale > 0:
            weights = np.exp(-(distances - distances.min(axis=0)) / scale)
        else:  # every atlas image equals the target: nothing to prefer
            weights = np.ones_like(distances)
        return Volume(vote(labels, lambda index, has_label: weights[index] * has_label), target.affine, is_labels=True)


@hookimpl
def atlasreg_fusions() -> list[Fusion]:
    return [MajorityVote(), WeightedVote()]
