"""The ``contrastive`` backend: the paper's model (weight-shared encoders, InfoNCE on their
projections, one decoder predicting a probabilistic stationary velocity field), trained with
recon + α·smooth + β·contrast (α = 1, β = 0.01)."""

from __future__ import annotations

from typing import Any, Mapping

from atlasreg.learned import LearnedBackend


class ContrastiveBackend(LearnedBackend):
    name = "contrastive"
    description = "contrastive registration (the paper's model): learned, diffeomorphic, needs a model file"
    loss_names = ("recon", "smooth", "contrast")
    architecture_keys = ("enc_channels", "dec_channels", "proj_dim")
    default_config = {
        "spacing": 2.0,
        "shape": [96, 112, 96],  # working grid: covers a whole brain at 2 mm
        "crop": [80, 96, 80],  # training crops (the paper: 80x106x80 of 91x109x91)
        "enc_channels": [16, 32, 32, 64],
        "dec_channels": [64, 32, 32, 32, 16],
        "proj_dim": 64,
        "int_steps": 7,
        "int_downsize": 2,  # scaling and squaring on the half-resolution grid (the decoder's output grid)
        "losses": ["recon", "smooth", "contrast"],
        "weights": {"recon": 1.0, "smooth": 1.0, "contrast": 0.01},
        "smooth": "laplacian",  # "laplacian" (smooth precision prior) or "paper" (eq. 6 as printed)
        "prior_lambda": 20.0,
        "image_sigma": 0.1,  # σ of eq. 4/7, in z-scored intensity units
        "tau": 0.1,
    }

    def build_network(self, config: Mapping[str, Any]):
        from .network import ContrastiveRegNet

        return ContrastiveRegNet(
            enc_channels=tuple(config["enc_channels"]),
            dec_channels=tuple(config["dec_channels"]),
            proj_dim=int(config["proj_dim"]),
            int_steps=int(config["int_steps"]),
            int_downsize=int(config["int_downsize"]),
        )

    def mean_flow(self, network, moving, fixed, config: Mapping[str, Any]):
        return network.flow(network(moving, fixed)["mean"])

    def predict_velocity(self, network, moving, fixed, config: Mapping[str, Any]):
        return network(moving, fixed)["mean"]

    def loss_terms(self, network, moving, fixed, config: Mapping[str, Any], sample: bool):
        from atlasreg.flow import warp

        from . import losses

        out = network(moving, fixed)
        velocity = network.sample(out["mean"], out["log_var"]) if sample else out["mean"]
        flow = network.flow(velocity)
        terms = {"recon": losses.recon(fixed, warp(moving, flow), config["image_sigma"])}
        if config["smooth"] == "paper":
            terms["smooth"] = losses.kl_paper(out["mean"], out["log_var"])
        else:
            terms["smooth"] = losses.kl_laplacian(out["mean"], out["log_var"], config["prior_lambda"])
        terms["contrast"] = losses.info_nce(out["proj_moving"], out["proj_fixed"], config["tau"])
        return flow, terms
