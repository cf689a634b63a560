"""Bad model files and names (issue 10): wrong weight shapes, pickled objects, a missing model found
before any work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import atlasreg

from conftest import case_files, refused, segment_args


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return case_files(tmp_path)


# --- 9: model files ------------------------------------------------------------------------------

def test_model_with_wrong_weight_shapes_names_the_config(capsys, files, tmp_path):
    torch = pytest.importorskip("torch")
    from atlasreg.models import save_model
    from atlasreg.registry import get_backend

    backend = get_backend("voxelmorph")
    small = {"shape": [16, 16, 16], "crop": [16, 16, 16], "enc_channels": [4, 8, 8, 8], "dec_channels": [8, 8, 8, 8, 8, 4, 4]}
    path = save_model(tmp_path / "vm.pt", "voxelmorph", backend.config(small), backend.build_network(backend.config(small)))
    state = torch.load(path, weights_only=True)
    state["config"]["enc_channels"] = [2, 4, 4, 4]  # the config now describes another network than the weights
    torch.save(state, path)
    err = refused(capsys, tmp_path, "do not fit the voxelmorph network", *segment_args(files, "--model", path, "-o", tmp_path / "o.nii.gz",
                                                                                           backend="voxelmorph"))
    assert "enc_channels=[2, 4, 4, 4]" in err


def test_model_holding_pickled_objects_is_refused(capsys, files, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "backend": "voxelmorph", "weights": {}, "config": {}, "payload": Path("x")}, path)
    refused(capsys, tmp_path, "refused: the file holds pickled Python objects", *segment_args(files, "--model", path, "-o", tmp_path / "o.nii.gz",
                                                                                                   backend="voxelmorph"))


# --- 14: a missing model found before any work ------------------------------------------------------

def test_missing_model_found_before_the_atlas_is_built(capsys, files, tmp_path, monkeypatch):
    import atlasreg.atlases

    def no_atlas(*_args, **_kwargs):
        raise AssertionError("the built-in atlas was built before the options were checked")

    monkeypatch.setattr(atlasreg.atlases, "load_atlas", no_atlas)
    refused(capsys, tmp_path, "neither a declared model name", "segment", files["target"], "-b", "contrastive",
            "--model", "no-such-model", "-o", tmp_path / "o.nii.gz")
    refused(capsys, tmp_path, "neither a declared model name", "segment", files["target"], "-b", "voxelmorph", "--model", tmp_path / "nope.pt",
            "-o", tmp_path / "o.nii.gz")
