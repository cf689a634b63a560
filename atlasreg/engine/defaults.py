"""The engine's default settings, in a module without torch: plugins show them as option defaults
without importing torch when the plugins are collected. Chosen on validation pairs only (atlas 01 ->
subjects 02-07; benchmarks/RESULTS.md), never on the test subjects 08-10."""

AFFINE_METRICS = ("mi", "mse")
AFFINE_LEVELS = (8.0, 4.0)  # voxel size (mm) of each pyramid level
AFFINE_RIGID_ITERATIONS = (100, 30)  # Adam steps per level, rigid stage
AFFINE_ITERATIONS = (50, 40)  # Adam steps per level, 12-parameter stage
AFFINE_SAMPLES = 5_000  # voxels the similarity reads per step

SVF_LEVELS = (4, 2, 1)  # shrink factor of each pyramid level (1: the working grid)
SVF_ITERATIONS = (60, 20, 10)  # 100, 30, 10: the same Dice (0.733) for 1.3x the time; 60, 20, 5: -0.007
#: the svf backend's presets: working-grid spacing (mm), pyramid levels and Adam steps per level
SVF_PRESETS = {
    "fast": {"spacing": 2.0, "shrink_factors": SVF_LEVELS, "iterations": SVF_ITERATIONS},
    # 100, 50, 30, 10: +0.003 Dice for twice the time (second renderer, validation subjects 05-07)
    "quality": {"spacing": 1.0, "shrink_factors": (8, 4, 2, 1), "iterations": (60, 20, 10, 5)},
}
SVF_SYMMETRIC = False  # both images meet halfway: measured lower Dice on validation pairs, and slower (benchmarks/RESULTS.md)
SVF_WINDOW = 5  # LNCC window, voxels
SVF_WEIGHT = 0.3  # diffusion regulariser
SVF_SMOOTHING = 1.0  # sigma (voxels) of the Gaussian on each update
SVF_LR = 0.2  # Adam step, voxels
SIMILARITIES = ("lncc", "mind")  # of the velocity optimiser: see engine.velocity.similarity_terms
