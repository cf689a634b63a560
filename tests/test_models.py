"""Named models: the ``atlasreg_models`` hook, ``atlasreg models``, --model NAME|PATH, checksums, shipped weights."""

import json

import pytest

torch = pytest.importorskip("torch")

import atlasreg  # noqa: E402
from atlasreg import AtlasregError  # noqa: E402
from atlasreg.hookspecs import hookimpl  # noqa: E402
from atlasreg.models import load_model_file, save_model  # noqa: E402
from atlasreg.models import default_model, list_models, publish, resolve, sha256, verify  # noqa: E402
from atlasreg.plugin_api import ModelSpec  # noqa: E402
from atlasreg.registry import get_backend, registry  # noqa: E402

from conftest import run_cli  # noqa: E402


class _ModelPlugin:
    """A third-party plugin that only declares a model."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @hookimpl
    def atlasreg_models(self):
        return [self.spec]


@pytest.fixture
def declared(tmp_path):
    """A tiny voxelmorph model file declared as 'tiny-vm' by a plugin registered for the test."""
    backend = get_backend("voxelmorph")
    config = backend.config({"shape": [32, 32, 32], "crop": [32, 32, 32], "enc_channels": [4, 8, 8, 8],
                             "dec_channels": [8, 8, 8, 8, 8, 4, 4]})
    path = save_model(tmp_path / "tiny.pt", "voxelmorph", config, backend.build_network(config))
    spec = ModelSpec("tiny-vm", "voxelmorph", str(path), sha256(path), "a tiny test model")
    plugin = _ModelPlugin(spec)
    registry().manager.register(plugin, name="test-models")
    yield spec
    registry().manager.unregister(plugin)


def test_hook_declares_models_and_cli_lists_them(declared, capsys):
    assert declared.name in {spec.name for spec, _ in list_models()}
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and rows["tiny-vm"]["status"] == "ok" and rows["tiny-vm"]["plugin"] == "test-models"
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "tiny-vm" in out and "a tiny test model" in out


def test_model_by_name_by_path_and_wrong_backend(declared, tmp_path):
    assert resolve("voxelmorph", "tiny-vm") == tmp_path / "tiny.pt"
    assert resolve("voxelmorph", str(tmp_path / "tiny.pt")) == tmp_path / "tiny.pt"
    with pytest.raises(AtlasregError, match="not a contrastive model"):
        resolve("contrastive", "tiny-vm")
    with pytest.raises(AtlasregError, match="neither a declared model name"):
        resolve("voxelmorph", str(tmp_path / "absent.pt"))


def test_damaged_or_missing_model_file_is_refused(declared, tmp_path, capsys, pair):
    path = tmp_path / "tiny.pt"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(AtlasregError, match="does not match its declared SHA-256"):
        verify(declared)
    moving, _, fixed, _ = pair
    with pytest.raises(AtlasregError, match="does not match its declared SHA-256"):
        atlasreg.register(moving, fixed, backend="voxelmorph", options={"model": "tiny-vm"})
    code, out, _ = run_cli(capsys, "models", "--json")
    assert "does not match" in {row["name"]: row for row in json.loads(out)}["tiny-vm"]["status"]
    path.unlink()
    with pytest.raises(AtlasregError, match="is missing"):
        verify(declared)


@pytest.mark.parametrize("backend", ["contrastive", "voxelmorph"])
def test_shipped_default_model_verifies_and_is_used_without_a_model_argument(backend, pair):
    spec = default_model(backend)
    assert spec is not None and spec.backend == backend
    assert verify(spec).is_file()
    moving, moving_labels, fixed, _ = pair
    transform = atlasreg.register(moving, fixed, backend=backend, options={"device": "cpu"})
    assert transform.shape == fixed.shape and transform.field is not None


def test_publish_keeps_weights_and_provenance_and_drops_the_optimiser(declared, tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    state = load_model_file(checkpoint)
    save_model(checkpoint, "voxelmorph", state["config"], get_backend("voxelmorph").build_network(state["config"]),
               {"step": 7, "optimizer": {"state": {}, "param_groups": []}, "training": {"steps": 7}})
    digest = publish(checkpoint, tmp_path / "shipped.pt")
    shipped = load_model_file(tmp_path / "shipped.pt")
    assert digest == sha256(tmp_path / "shipped.pt")
    assert "optimizer" not in shipped and shipped["step"] == 7 and shipped["training"] == {"steps": 7}
    assert all(torch.equal(shipped["weights"][k], v) for k, v in load_model_file(checkpoint)["weights"].items())


def test_segment_with_the_contrastive_backend_needs_no_model_argument(tmp_path, pair, capsys):
    """The command the project exists for, on a fresh install: the shipped model, offline."""
    moving, moving_labels, fixed, _ = pair
    paths = [atlasreg.save(v, tmp_path / f"{n}.nii.gz") for n, v in (("atlas", moving), ("atlas_seg", moving_labels), ("scan", fixed))]
    code, _, err = run_cli(capsys, "segment", paths[2], "-a", paths[0], paths[1], "-b", "contrastive", "-o", tmp_path / "out.nii.gz")
    assert code == 0, err
    assert atlasreg.load(tmp_path / "out.nii.gz", labels=True).same_grid(fixed)
