"""Bad option values (issue 10), refused in one line before any work: train arguments that train
nothing, backend and fusion options out of range, a fusion checked with one atlas too, KEY=VALUE pairs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import case_files, compare_args, refused, segment_args, run_cli as run


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


# --- 6: train arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [("--steps", "0"), ("--batch-size", "-1"), ("--lr", "0"), ("--lr", "nan"),
                                  ("--max-minutes", "-1"), ("--lr-floor", "0"), ("--seed", "-1"),
                                  ("--weight", "smooth=abc"), ("--weight", "smooth=-1")])
def test_train_refuses_arguments_that_train_nothing(capsys, files, tmp_path, flag):
    refused(capsys, tmp_path, flag[0].lstrip("-").replace("-", "_"), "train", "-b", "voxelmorph", "--images", files["target"],
            "--atlas", files["atlas"], files["atlas_seg"], "-o", tmp_path / "model.pt", *flag)


# --- 7: option values out of range ----------------------------------------------------------------

@pytest.mark.parametrize("backend,option,message", [
    ("affine", "levels=nan", "finite"), ("affine", "levels=8,inf", "finite"), ("affine", "levels=0", ">= 0.1 and <= 64"),
    ("affine", "levels=", "at least one"), ("affine", "metric=ssd", "choose one of"),
    ("affine", "rigid_iterations=-5,5", ">= 0"), ("affine", "affine_iterations=99999999999,1", "<= 100000"),
    ("affine", "rigid_iterations=10", "one count per level"), ("affine", "samples=10", ">= 100"),
    ("svf", "window=4", "odd"), ("svf", "regularisation=-1", ">= 0"), ("svf", "iterations=10,10", "one count per level"),
    ("simpleitk", "grid_mm=0", "> 0"), ("simpleitk", "smoothing=-1", ">= 0"), ("simpleitk", "iterations=10,10", "one value per level"),
    ("ants", "iterations=-1,-1", ">= 0"), ("ants", "seed=-3", ">= 0"), ("voxelmorph", "optimize_steps=-3", ">= 0"),
])
def test_backend_options_out_of_range_are_refused(capsys, files, tmp_path, backend, option, message):
    refused(capsys, tmp_path, message, "segment", files["target"], "-a", files["atlas"], files["atlas_seg"], "-b", backend,
            "-O", option, "-o", tmp_path / "out.nii.gz")


@pytest.mark.parametrize("fusion,option", [("weighted", "h=0"), ("weighted", "sigma_mm=-1"), ("staple", "max_iterations=0"),
                                           ("jlf", "radius=-1"), ("jlf", "rho=nan")])
def test_fusion_options_out_of_range_are_refused(capsys, files, tmp_path, fusion, option):
    refused(capsys, tmp_path, "must be", *segment_args(files, "-a", files["atlas"], files["atlas_seg"], "-f", fusion, "-F", option,
                                                   "-o", tmp_path / "out.nii.gz"))


def test_optimize_steps_flag_and_synth_seed_are_range_checked(capsys, files, tmp_path):
    refused(capsys, tmp_path, "optimize_steps", *segment_args(files, "--optimize-steps", "-3", "-o", tmp_path / "o.nii.gz", backend="voxelmorph"))
    refused(capsys, tmp_path, "--seed", "synth", files["atlas_seg"], "--seed", "-1", "-o", tmp_path / "s.nii.gz")


def test_every_first_party_option_declares_a_range_where_numeric(capsys):
    from atlasreg.registry import registry

    methods = {**registry().backends(), **registry().fusions()}
    for name, (method, _) in methods.items():
        for key, option in method.options.items():
            numeric = isinstance(option.default, (int, float)) and not isinstance(option.default, bool)
            numeric |= isinstance(option.default, tuple)
            if numeric:
                assert option.range_text(), f"{name}: option {key} declares no valid range"
    code, out, _ = run(capsys, "options", "affine")
    assert code == 0 and "levels=8.0,4.0 (>= 0.1 and <= 64)" in out and "rigid_iterations=100,30 (>= 0 and <= 100000)" in out


# --- 13: fusion checked with one atlas too ------------------------------------------------------------

def test_fusion_name_and_options_checked_with_one_atlas(capsys, files, tmp_path):
    refused(capsys, tmp_path, "unknown fusion 'no-such-fusion'", *segment_args(files, "-f", "no-such-fusion", "-o", tmp_path / "o.nii.gz"))
    refused(capsys, tmp_path, "unknown option bogus", *segment_args(files, "-F", "bogus=1", "-o", tmp_path / "o.nii.gz"))


# --- the one KEY=VALUE parser -----------------------------------------------------------------------

def test_one_key_value_parser_for_every_flag(capsys, files, tmp_path):
    refused(capsys, tmp_path, "expected KEY=VALUE", *segment_args(files, "-O", "=3", "-o", tmp_path / "o.nii.gz"))
    refused(capsys, tmp_path, "expected KEY=VALUE", *segment_args(files, "-F", "nothing", "-o", tmp_path / "o.nii.gz"))
    args = compare_args(files, tmp_path / "report")
    args[args.index("affine")] = "affine:samples"
    refused(capsys, tmp_path, "expected KEY=VALUE", *args)
    refused(capsys, tmp_path, "expected KEY=VALUE", *compare_args(files, tmp_path / "report", "--model", "voxelmorph"))
