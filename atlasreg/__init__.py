"""atlasreg: atlas registration and registration-based segmentation of 3-D medical images.

    import atlasreg
    labels = atlasreg.segment("scan.nii.gz", [("atlas.nii.gz", "atlas_seg.nii.gz")], backend="ants")
    atlasreg.save(labels, "scan_seg.nii.gz")
    print(atlasreg.evaluate(labels, "truth.nii.gz")["mean_dice"])
"""

from ._version import __version__
from .errors import AtlasregError
from .io import load, save
from .pipeline import apply, evaluate, register, segment, segment_many
from .registry import backend_infos as backends, fusion_infos as fusions
from .transform import Transform
from .volume import Volume

__all__ = [
    "AtlasregError",
    "Transform",
    "Volume",
    "apply",
    "backends",
    "evaluate",
    "fusions",
    "load",
    "register",
    "save",
    "segment",
    "segment_many",
]
