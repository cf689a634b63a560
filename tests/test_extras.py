"""The optional extras (issue 19): without antspyx, SimpleITK and Dask, the core still imports and
runs; their backends are listed as unavailable with the line that installs them, and choosing one
fails in that one line. A missing package is simulated by blocking its import (sys.modules[name] =
None makes ``import name`` fail as if it were not installed), in a fresh interpreter."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np

import atlasreg
from atlasreg.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("ants", "SimpleITK", "dask", "distributed")

#: a fresh interpreter with the extras' packages blocked; the rest of its argv goes to the CLI
WITHOUT_EXTRAS = f"""
import pkgutil, sys
for name in {EXTRAS!r}:
    sys.modules[name] = None
import atlasreg
for module in pkgutil.walk_packages(atlasreg.__path__, "atlasreg."):  # every core module imports without them
    if module.name != "atlasreg.__main__":  # (that one runs the CLI)
        __import__(module.name)
from atlasreg.cli import main
main(sys.argv[1:])
"""


def _without_extras(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_backends_without_the_extras_name_the_install_line(tmp_path):
    done = _without_extras("backends", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    infos = {row["name"]: row for row in json.loads(done.stdout)}
    for name in ("affine", "svf", "contrastive", "voxelmorph"):  # the core install's torch backends
        assert infos[name]["available"], infos[name]
    assert not infos["ants"]["available"] and infos["ants"]["reason"].endswith("pip install 'atlasreg[ants]'")
    assert not infos["simpleitk"]["available"] and infos["simpleitk"]["reason"].endswith("pip install 'atlasreg[itk]'")


def test_choosing_a_missing_backend_is_one_line(tmp_path):
    labels = np.zeros((12, 12, 12), np.int32)
    labels[3:9, 3:9, 3:9] = 1
    atlasreg.save(Volume(labels.astype(np.float32), np.eye(4), is_labels=False), tmp_path / "t.nii.gz")
    atlasreg.save(Volume(labels.astype(np.float32), np.eye(4), is_labels=False), tmp_path / "u.nii.gz")
    atlasreg.save(Volume(labels, np.eye(4), is_labels=True), tmp_path / "a_seg.nii.gz")
    done = _without_extras("segment", "t.nii.gz", "-a", "t.nii.gz", "a_seg.nii.gz", "-b", "ants", "-o", "out.nii.gz", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == ("atlasreg: error: backend 'ants' is unavailable: needs the Python package providing 'ants' "
                                   "(not installed): pip install 'atlasreg[ants]'")
    assert not (tmp_path / "out.nii.gz").exists()
    done = _without_extras("segment", "t.nii.gz", "u.nii.gz", "-a", "t.nii.gz", "a_seg.nii.gz", "-b", "affine", "--dask",
                           "-o", "out", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == "atlasreg: error: Dask is not installed: pip install 'atlasreg[dask]'"
    assert not (tmp_path / "out").exists()  # refused before any work
    (tmp_path / "warp.h5").write_bytes(b"HDF")  # an ITK composite transform (as ANTs writes): read through SimpleITK
    done = _without_extras("apply", "warp.h5", "t.nii.gz", "-r", "t.nii.gz", "-o", "moved.nii.gz", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == ("atlasreg: error: warp.h5: reading this transform file needs SimpleITK "
                                                            "(not installed): pip install 'atlasreg[itk]'")


def test_the_extras_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for package in ("antspyx", "simpleitk", "dask"):
        assert package not in core  # optional
    for package in ("torch", "nibabel", "pybids"):
        assert package in core  # segment, evaluate, bids and the torch backends
    extras = project["optional-dependencies"]
    assert extras["ants"] == ["antspyx>=0.5"] and extras["itk"] == ["SimpleITK>=2.3"] and extras["dask"][0].startswith("dask[distributed]")
    assert extras["all"] == ["atlasreg[ants,itk,dask]"] and "test" in extras
