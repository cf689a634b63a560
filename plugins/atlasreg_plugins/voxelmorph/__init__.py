"""VoxelMorph plugin: the ``voxelmorph`` learned baseline backend (needs torch), and its shipped
pretrained weights (``models/``, package data; see docs/models.md)."""

from pathlib import Path

from atlasreg.hookspecs import hookimpl
from atlasreg.plugin_api import ModelSpec

from .backend import VoxelMorphBackend

MODELS = Path(__file__).parent / "models"


# (Declarations alike in shape across plugins by design: the duplicates report lists them as a pair.)
@hookimpl
def atlasreg_backends():
    return [VoxelMorphBackend()]


@hookimpl
def atlasreg_models():
    return [
        ModelSpec(
            name="voxelmorph-synth",
            backend="voxelmorph",
            file=str(MODELS / "voxelmorph-synth.pt"),
            sha256="5825be99ffa9e6e4645b2f6fbc469b1a18259e1b9f2a937eefccc5b8fded1ce1",
            description="the learned baseline, trained like contrastive-synth at the same budget (CPU-trained; docs/models.md)",
            default=True,
        )
    ]
