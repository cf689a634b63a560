"""Contrastive plugin: the ``contrastive`` backend, the paper's model (needs torch), and its shipped
pretrained weights (``models/``, package data; see docs/models.md)."""

from pathlib import Path

from atlasreg.hookspecs import hookimpl
from atlasreg.plugin_api import ModelSpec

from .backend import ContrastiveBackend

MODELS = Path(__file__).parent / "models"


# (Declarations alike in shape across plugins by design: the duplicates report lists them as a pair.)
@hookimpl
def atlasreg_backends():
    return [ContrastiveBackend()]


@hookimpl
def atlasreg_models():
    return [
        ModelSpec(
            name="contrastive-synth",
            backend="contrastive",
            file=str(MODELS / "contrastive-synth.pt"),
            sha256="5e7fa77615824857f86f940e3276a4b2ef61dc22dcbed2ab3915b75e238067e5",
            description="any atlas to any skull-stripped target, any contrast: trained on pairs synthesized from 7 label maps (CPU-trained; docs/models.md)",
            default=True,
        )
    ]
