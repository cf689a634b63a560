"""What every label-fusion plugin shares: input checks, the label union, renumbering to 1..K and
back, and per-voxel voting (plain majority is also STAPLE's fallback for undecided voxels).

Plugins import these from the core, never from each other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .errors import AtlasregError
from .volume import Volume


def validate_inputs(target: Volume, images: Sequence[Volume], labels: Sequence[Volume]) -> None:
    """Raise AtlasregError unless there is at least one atlas, as many images as label maps,
    integer label maps, and every input on the target's grid."""
    if not labels:
        raise AtlasregError("label fusion needs at least one atlas")
    if len(images) != len(labels):
        raise AtlasregError(f"label fusion got {len(images)} atlas images but {len(labels)} label maps")
    for kind, volumes in (("image", images), ("label map", labels)):
        for index, volume in enumerate(volumes):
            if not volume.same_grid(target):
                raise AtlasregError(f"atlas {kind} {index} is not on the target grid (warp it onto the target first)")
    for index, volume in enumerate(labels):
        if not volume.is_labels:
            raise AtlasregError(f"atlas label map {index} is not an integer label map")


def label_union(labels: Sequence[Volume]) -> np.ndarray:
    """Sorted label values (background 0 included when present) found in any of ``labels``."""
    return np.unique(np.concatenate([np.unique(volume.array) for volume in labels]))


def to_compact(values: np.ndarray, volume: Volume) -> Volume:
    """``volume``'s labels renumbered 1..K by their rank in ``values`` (a ``label_union``): tools
    whose memory grows with the largest label value (or that treat 0 specially) get dense numbers."""
    return volume.with_array(np.searchsorted(values, volume.array).astype(np.int32) + 1)


def from_compact(values: np.ndarray, compact: np.ndarray) -> np.ndarray:
    """Inverse of ``to_compact``: 1..K back to ``values``; indices outside 1..K are clipped into range."""
    return values[np.clip(compact - 1, 0, len(values) - 1)].astype(np.int32)


def vote(labels: Sequence[Volume], score: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Per voxel, the label with the highest summed ``score(atlas_index, atlas_has_label)``.

    Labels are visited one at a time into running best-score / best-label arrays, so memory stays
    a few volumes whatever the number of labels. Ascending order and a strictly-higher rule make
    ties go to the smallest label; the result never holds a label no atlas gave.
    """
    shape = labels[0].shape
    best_score = np.full(shape, -np.inf, dtype=np.float32)
    best_label = np.zeros(shape, dtype=np.int32)
    for value in label_union(labels):
        total = np.zeros(shape, dtype=np.float32)
        for index, volume in enumerate(labels):
            total += score(index, volume.array == value)
        better = total > best_score
        best_score[better] = total[better]
        best_label[better] = value
    return best_label


def majority_vote(labels: Sequence[Volume]) -> np.ndarray:
    """Per voxel, the label most atlases give (ties: smallest label)."""
    return vote(labels, lambda _index, has_label: has_label)
