"""ANTs (antspyx) registration: affine, then SyN, with named presets.

Presets:
- ``fast``: antspyx's ``SyN`` defaults (affine + SyN, 40x20x0 iterations, Mattes MI) — seconds
  per 2 mm pair, the quick reference;
- ``quality``: ``antsRegistrationSyN[s]``, the schedule of ANTs' antsRegistrationSyN.sh (rigid +
  affine + SyN to full resolution) — about 20x slower, markedly more accurate.

Its SyN stage compares images by CC (local correlation). A target whose contrast runs against the
atlas's (a T2 scan, a T1 atlas) is given to ANTs with the engine's matched background, as ``svf``
sees it: without it, CC is pulled the wrong way at the brain's edge (validation, second renderer
05-07, T1 atlas -> T2-like / inverted targets: 0.336 / 0.122 mean aseg Dice, 0.690 / 0.710 with it).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from atlasreg.errors import AtlasregError
from atlasreg.itk_space import read_itk_affine
from atlasreg.plugin_api import MAX_ITERATIONS, MAX_SEED, Backend, Option
from atlasreg.transform import Transform
from atlasreg.volume import Volume

from .child import run_in_child
from .convert import to_ants
from .threads import import_ants, reproducible

PRESETS = {"fast": "SyN", "quality": "antsRegistrationSyN[s]"}


class AntsBackend(Backend):
    name = "ants"
    description = "ANTs SyN after affine (antspyx); presets fast / quality"
    requires = ("ants",)
    install = "pip install 'atlasreg[ants]'"
    options = {
        "preset": Option("quality", "fast: antspyx SyN defaults (about 6 s a pair at 2 mm on 2 CPU cores); quality: the "
                         "antsRegistrationSyN.sh schedule (about 180 s; benchmarks/RESULTS.md)", tuple(PRESETS)),
        "transform": Option("", "an antspyx type_of_transform overriding the preset, e.g. SyNCC, Affine, antsRegistrationSyNQuick[s]"),
        "iterations": Option((), "SyN iterations per level, coarse to fine, e.g. 40,20,0 (empty: the transform's own)",
                             minimum=0, maximum=MAX_ITERATIONS),
        "seed": Option(1, "seed for ANTs' random metric sampling", minimum=0, maximum=MAX_SEED),
    }

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return reproducible()

    def register(self, moving: Volume, fixed: Volume, **options: Any) -> Transform:
        kwargs: dict[str, Any] = {"type_of_transform": options["transform"] or PRESETS[options["preset"]]}
        if options["iterations"]:
            kwargs["reg_iterations"] = tuple(options["iterations"])
        seen = fixed
        if _correlates_locally(kwargs["type_of_transform"]):
            from atlasreg.engine import affine_stage
            from atlasreg.engine.grid import matched_background_on

            seen = matched_background_on(moving, fixed, affine_stage(moving, fixed))
        outdir = tempfile.mkdtemp(prefix="atlasreg-ants-")
        try:
            fwdtransforms = run_in_child(_registration, seen, moving, f"{outdir}/", options["seed"], kwargs)
            return _to_transform(fixed, fwdtransforms)
        finally:
            shutil.rmtree(outdir, ignore_errors=True)


def _correlates_locally(type_of_transform: str) -> bool:
    """Whether ANTs' deformable stage of ``type_of_transform`` uses CC (local correlation):
    ``SyNCC`` and the like, and antsRegistrationSyN[x] and its Repro forms, but not
    antsRegistrationSyNQuick[x], which uses MI.

    (Such a registration gets the engine's matched background: the module's docstring says why.)"""
    quick_mi = "Quick" in type_of_transform and "Repro" not in type_of_transform
    return "CC" in type_of_transform or (type_of_transform.startswith("antsRegistrationSyN") and not quick_mi)


def _registration(fixed: Volume, moving: Volume, outprefix: str, seed: int, kwargs: dict[str, Any]) -> list[str]:
    """ants.registration with ``seed``; the forward transform files it wrote under ``outprefix``."""
    ants = import_ants()

    previous_seed = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        return ants.registration(to_ants(fixed), to_ants(moving), outprefix=outprefix, **kwargs)["fwdtransforms"]
    except ValueError as exc:  # antspyx reports a bad type_of_transform this way
        raise AtlasregError(f"ants: {exc}") from None
    finally:
        ants.config._random_seed = previous_seed


def _to_transform(fixed: Volume, fwdtransforms: list[str]) -> Transform:
    """ANTs' forward list [warp?, affine?] (point order: warp first, then affine) as one Transform."""
    field = None
    matrix = np.eye(4)
    for path in fwdtransforms:
        if path.endswith(".mat"):
            matrix = matrix @ read_itk_affine(Path(path))
        elif field is None:
            field = Transform.load(path).field
        else:
            raise AtlasregError(f"ants: unexpected transform list {fwdtransforms}")
    return Transform.from_field(fixed, field, matrix) if field is not None else Transform.from_matrix(fixed, matrix)
