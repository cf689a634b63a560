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


def test_licence_citation_changelog_and_containers():
    """The licence pyproject declares is the one that ships; citation, changelog and container recipes are there."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence and "END OF TERMS AND CONDITIONS" in licence
    citation = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and f"version: {project['version']}" in citation and "license: Apache-2.0" in citation
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
    for recipe, torch_line in (("Dockerfile", "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
                               ("Dockerfile.cuda", "pip install torch==2.13.0\n")):
        text = (ROOT / recipe).read_text()
        assert "FROM python:3.11-slim" in text and torch_line in text and '[all]"' in text
        assert 'ENTRYPOINT ["atlasreg"]' in text


def test_ci_runs_exactly_the_readme_test_command():
    """The README's two commands install every extra; CI runs the test command as written there."""
    readme = (ROOT / "README.md").read_text()
    venv = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    assert venv + 'pip install -e ".[all]" && atlasreg demo' in readme
    test_command = venv + 'pip install -e ".[all,test]" && python -m pytest'
    assert test_command in readme
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command
