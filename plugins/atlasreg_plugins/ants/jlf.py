"""Joint label fusion (Wang et al. 2013) with ANTsPy's ``ants.joint_label_fusion``.

JLF weights atlases per voxel from patch similarity to the target, jointly, so atlases that make
the same mistakes do not outvote the others.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np
from scipy.ndimage import binary_dilation

from atlasreg.fusion import from_compact, label_union, to_compact, validate_inputs
from atlasreg.plugin_api import Fusion, Option
from atlasreg.volume import Volume

from .threads import reproducible

MAX_RADIUS = 16  # voxels; a wider patch or search costs hours per target


class JointLabelFusion(Fusion):
    """ANTs joint label fusion inside a mask: voxels where any atlas has a non-zero label,
    dilated by ``mask_dilation`` voxels so boundaries can move outwards; 0 outside the mask.

    ANTs produces a posterior only for non-zero labels, so inside the mask it would never choose
    background. Labels are therefore renumbered 1..K with background as 1, fused, and mapped back:
    background competes like any other label. A single atlas is returned unchanged (nothing to fuse).
    """

    name = "jlf"
    description = "joint label fusion (ANTs): patch-based weights that account for atlases' correlated errors"
    requires = ("ants",)
    install = "pip install 'atlasreg[ants]'"
    options = {
        "beta": Option(2.0, "exponent sharpening the patch-similarity weights (ANTs' recommended 2)", minimum=0, exclusive_minimum=True),
        "radius": Option(2, "patch radius in voxels", minimum=0, maximum=MAX_RADIUS),
        "search_radius": Option(3, "radius in voxels searched for the best-matching atlas patch", minimum=0, maximum=MAX_RADIUS),
        "rho": Option(0.01, "ridge penalty: more robust to outliers, pulls weights towards equal", minimum=0, exclusive_minimum=True),
        "similarity": Option("msq", "patch similarity: mean squares or Pearson correlation", ("msq", "correlation")),
        "nonnegative": Option(False, "constrain atlas weights to be non-negative"),
        "mask_dilation": Option(2, "voxels by which the union of atlas labels is dilated to form the fusion mask", minimum=0, maximum=MAX_RADIUS),
    }

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return reproducible()

    def fuse(self, target: Volume, images: Sequence[Volume], labels: Sequence[Volume], **options: Any) -> Volume:
        validate_inputs(target, images, labels)
        if len(labels) == 1:
            return Volume(labels[0].array.astype(np.int32), target.affine, is_labels=True)

        from .convert import from_ants, to_ants
        from .threads import import_ants

        ants = import_ants()

        mask = np.any([volume.array != 0 for volume in labels], axis=0)
        if options["mask_dilation"]:
            mask = binary_dilation(mask, iterations=options["mask_dilation"])
        values = label_union(labels)
        with tempfile.TemporaryDirectory(prefix="atlasreg-jlf-") as scratch:
            result = ants.joint_label_fusion(
                to_ants(target),
                to_ants(target.with_array(mask.astype(np.float32))),
                [to_ants(volume) for volume in images],
                beta=options["beta"],
                rad=options["radius"],
                label_list=[to_ants(to_compact(values, volume)) for volume in labels],
                rho=options["rho"],
                usecor=options["similarity"] == "correlation",
                r_search=options["search_radius"],
                nonnegative=options["nonnegative"],
                output_prefix=os.path.join(scratch, "jlf_"),  # posterior maps land here, not in /tmp
            )
        index = from_ants(result["segmentation"], labels=True).array
        return Volume(np.where(mask, from_compact(values, index), 0).astype(np.int32), target.affine, is_labels=True)
