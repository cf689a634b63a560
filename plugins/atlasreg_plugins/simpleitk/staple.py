"""STAPLE label fusion with SimpleITK's MultiLabelSTAPLEImageFilter.

STAPLE estimates each atlas's confusion matrix by expectation-maximisation and weights its votes
by that estimated reliability (Warfield et al. 2004; multi-label form by Rohlfing et al. 2004).
"""

from __future__ import annotations

from typing import Any, Sequence

from atlasreg.fusion import from_compact, label_union, majority_vote, to_compact, validate_inputs
from atlasreg.plugin_api import MAX_ITERATIONS, Fusion, Option
from atlasreg.volume import Volume


class Staple(Fusion):
    """Multi-label STAPLE; voxels the filter leaves undecided (posterior ties) take the majority vote.

    Labels are renumbered 1..K for the filter (its confusion matrices grow with the largest label
    value, so sparse label numbers like FreeSurfer's 2035 would waste memory) and mapped back.
    Index 0 stays unused: with zero prior it never wins, and K + 1 marks undecided voxels.
    """

    # (class attributes every method declares: alike in shape with its sibling, the duplicates report lists the pair)
    name = "staple"
    description = "STAPLE (SimpleITK MultiLabelSTAPLE): votes weighted by each atlas's estimated reliability"
    requires = ("SimpleITK",)
    install = "pip install 'atlasreg[itk]'"
    deterministic = True  # single-threaded (threads.py)
    options = {
        "max_iterations": Option(100, "maximum EM iterations", minimum=1, maximum=MAX_ITERATIONS),
        "tolerance": Option(1e-5, "stop when no confusion-matrix entry changes by more than this", minimum=0),
    }

    def fuse(self, target: Volume, images: Sequence[Volume], labels: Sequence[Volume], **options: Any) -> Volume:
        import SimpleITK as sitk

        from .convert import from_sitk, to_sitk
        from .threads import single_threaded

        validate_inputs(target, images, labels)
        values = label_union(labels)
        undecided = len(values) + 1
        with single_threaded():  # reproducible: EM sums over voxels in thread order
            staple = sitk.MultiLabelSTAPLEImageFilter()
            staple.SetLabelForUndecidedPixels(undecided)
            staple.SetMaximumNumberOfIterations(options["max_iterations"])
            staple.SetTerminationUpdateThreshold(options["tolerance"])
            index = from_sitk(staple.Execute([to_sitk(to_compact(values, volume)) for volume in labels]), labels=True).array
        fused = from_compact(values, index)
        undecided_voxels = index == undecided
        if undecided_voxels.any():
            fused[undecided_voxels] = majority_vote(labels)[undecided_voxels]
        return Volume(fused, target.affine, is_labels=True)
