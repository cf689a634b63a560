"""The ``voxelmorph`` backend: a VoxelMorph-style U-Net on the concatenated pair predicting a
stationary velocity field (diffeomorphic by scaling and squaring), trained with a data term + λ·gradient
smoothness: image similarity (local NCC or MSE) on image pairs, label overlap (``dice``) on pairs
synthesized from label maps. The learned baseline the contrastive model is measured against."""

from __future__ import annotations

from typing import Any, Mapping

from atlasreg.learned import LearnedBackend


class VoxelMorphBackend(LearnedBackend):
    name = "voxelmorph"
    description = "VoxelMorph-style U-Net baseline: learned, diffeomorphic; ships a pretrained model"
    loss_names = ("sim", "dice", "smooth")
    architecture_keys = ("enc_channels", "dec_channels")
    default_config = {
        "spacing": 2.0,
        "shape": [96, 112, 96],
        "crop": [64, 80, 64],
        "enc_channels": [16, 32, 32, 32],
        "dec_channels": [32, 32, 32, 32, 32, 16, 16],
        "int_steps": 7,
        "int_downsize": 2,  # scaling and squaring on the half-resolution grid (the decoder's output grid)
        "losses": ["sim", "dice", "smooth"],  # sim on image pairs, dice (label overlap) on --synth pairs
        "weights": {"sim": 1.0, "dice": 1.0, "smooth": 1.0},
        "similarity": "ncc",  # "ncc" (local, window 9) or "mse"
        "ncc_window": 9,
    }

    def build_network(self, config: Mapping[str, Any]):
        from .network import VoxelMorphNet

        return VoxelMorphNet(
            enc=tuple(config["enc_channels"]), dec=tuple(config["dec_channels"]), int_steps=int(config["int_steps"]),
            int_downsize=int(config["int_downsize"]),
        )

    def network_terms(self, network, pair, config: Mapping[str, Any], sample: bool):
        from . import losses

        flow = network(pair.moving, pair.fixed)["flow"]
        return flow, {"smooth": losses.grad_smoothness(flow)}

    def image_similarity(self, fixed, warped, config: Mapping[str, Any]):
        from . import losses

        if config["similarity"] == "mse":
            return losses.mse(fixed, warped)
        return losses.local_ncc(fixed, warped, int(config["ncc_window"]))
