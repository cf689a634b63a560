"""The wheel a non-editable `pip install .` builds holds every plugin module and every data file."""

import configparser
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is needed to build the wheel offline")
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
        capture_output=True,
    )
    (path,) = out.glob("atlasreg-*.whl")
    return zipfile.ZipFile(path)


def test_every_entry_point_module_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    (entry_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(entry_file).decode())
    modules = [value for _, value in entry_points.items("atlasreg.plugins")]
    assert "atlasreg_plugins.ants" in modules
    for module in modules:
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module


def test_every_source_package_and_data_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    for top in (ROOT / "atlasreg", ROOT / "plugins" / "atlasreg_plugins"):
        for source in top.rglob("*.py"):
            assert source.relative_to(top.parent).as_posix() in names, source
    for data in (ROOT / "atlasreg" / "data").rglob("*"):
        if data.is_file():
            assert data.relative_to(ROOT).as_posix() in names, data


def test_shipped_model_weights_are_in_the_wheel(wheel):
    names = set(wheel.namelist())
    shipped = sorted((ROOT / "plugins" / "atlasreg_plugins").glob("*/models/*.pt"))
    assert {p.parent.parent.name for p in shipped} >= {"contrastive", "voxelmorph"}
    for model in shipped:
        assert model.relative_to(ROOT / "plugins").as_posix() in names, model
