"""The ``svf`` backend: the core's torch affine stage, then a stationary velocity field optimised
with Adam on a multi-resolution pyramid (LNCC + diffusion regulariser, Gaussian-smoothed updates,
scaling and squaring), in the spirit of FireANTs. Diffeomorphic, no model file, CPU or GPU."""

from __future__ import annotations

from typing import Any, Mapping

from atlasreg.engine import defaults
from atlasreg.engine.grid import align_pair, covering_grid, pick_device, similarity_target, transform_from_flow
from atlasreg.errors import AtlasregError
from atlasreg.plugin_api import MAX_ITERATIONS, MAX_SHRINK, Backend, Option
from atlasreg.transform import Transform, Velocity
from atlasreg.volume import Volume


class SvfBackend(Backend):
    name = "svf"
    description = "affine, then a stationary velocity field optimised by Adam on a pyramid (LNCC; torch, CPU or GPU)"
    devices = ("cpu", "cuda")
    requires = ("torch",)
    deterministic = True  # no random element; same bytes on CPU (tests/test_engine.py)
    options = {
        "preset": Option("fast", "fast: a 2 mm working grid, shrink factors 4,2,1, iterations 60,20,10 (seconds a pair on a CPU); "
                         "quality: a 1 mm working grid, shrink factors 8,4,2,1, iterations 60,20,10,5 (finer detail on 1 mm "
                         "scans, several times slower); spacing, shrink_factors and iterations given override it",
                         tuple(defaults.SVF_PRESETS)),
        "shrink_factors": Option((), "shrink factor of each pyramid level, coarse to fine, 1 = the working grid (empty: the "
                                 "preset's; SimpleITK's name; 'levels' is read as this, deprecated)",
                         minimum=1, maximum=MAX_SHRINK),
        "iterations": Option((), "Adam steps per level (empty: the preset's)", minimum=0, maximum=MAX_ITERATIONS),
        "similarity": Option("lncc", "lncc: one contrast, or contrasts whose intensities map one to one inside the brain "
                             "(T1 to T2-like or inverted: a target darker where the atlas is brighter gets a bright "
                             "background); mind: MIND-SSC descriptors, for any two contrasts (T1 to FLAIR, lesions, "
                             "synthetic contrasts), slower", defaults.SIMILARITIES),
        "symmetric": Option(defaults.SVF_SYMMETRIC, "both images move halfway (as SyN); false: only the moving image moves"),
        "window": Option(defaults.SVF_WINDOW, "LNCC window in voxels (odd)", minimum=3, maximum=31),
        "regularisation": Option(defaults.SVF_WEIGHT, "weight of the diffusion regulariser on the velocity", minimum=0),
        "smoothing": Option(defaults.SVF_SMOOTHING, "sigma in voxels of the Gaussian smoothing each update (0 = none)", minimum=0, maximum=10),
        "lr": Option(defaults.SVF_LR, "Adam step size in voxels", minimum=0, exclusive_minimum=True, maximum=10),
        "spacing": Option(0.0, "voxel size of the working grid in mm, >= 0.25 (0: the preset's)", minimum=0, maximum=8),
        "device": Option("auto", "where the optimisation runs", ("auto", "cpu", "cuda")),
    }

    renamed = {"levels": "shrink_factors"}  # 'levels' means millimetres in the affine backend

    def check_options(self, resolved: Mapping[str, Any]) -> None:
        """What spans options: shrink factors coarse to fine, one iteration count per level, an odd window."""
        settings = with_preset(resolved)
        levels = settings["shrink_factors"]
        if list(levels) != sorted(levels, reverse=True):
            raise AtlasregError(f"svf: shrink_factors={','.join(map(str, levels))}: need shrink factors coarse to fine (e.g. 4,2,1)")
        if len(settings["iterations"]) != len(levels):
            raise AtlasregError(f"svf: iterations needs one count per level ({len(levels)} levels)")
        if resolved["window"] % 2 == 0:
            raise AtlasregError(f"svf: window={resolved['window']}: need an odd number")
        if settings["spacing"] < 0.25:
            raise AtlasregError(f"svf: spacing={settings['spacing']}: must be >= 0.25 mm")

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        import torch

        from atlasreg.engine import displacement, optimize_velocity
        from atlasreg.engine.velocity import INTEGRATION_STEPS

        options = with_preset(options)
        device = pick_device(options["device"])
        pair = align_pair(moving, fixed, covering_grid(fixed, options["spacing"]), device=device)
        shape = pair.grid.shape
        moving_t = torch.from_numpy(pair.moving)[None, None].to(device)
        fixed_t = torch.from_numpy(similarity_target(pair.moving, pair.fixed, options["similarity"]))[None, None].to(device)
        velocity = optimize_velocity(
            moving_t, fixed_t, levels=options["shrink_factors"], iterations=options["iterations"], window=options["window"],
            weight=options["regularisation"], smoothing=options["smoothing"], lr=options["lr"],
            similarity=options["similarity"], symmetric=options["symmetric"],
        )
        kept = Velocity(velocity[0].cpu().numpy(), shape, pair.grid.affine, INTEGRATION_STEPS)  # for the exact inverse
        return transform_from_flow(displacement(velocity, shape)[0], pair, fixed, kept)




def with_preset(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the preset's spacing, shrink factors and iterations where they were left empty."""
    preset = defaults.SVF_PRESETS[options["preset"]]
    return {**options, **{key: value for key, value in preset.items() if not options[key]}}
