"""`atlasreg train` under torchrun: 2 CPU processes (gloo) follow the 1-process run with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import atlasreg  # noqa: E402
from atlasreg.volume import label_map  # noqa: E402

from conftest import blob_labels  # noqa: E402

TINY = ["--shape", "24,24,24", "--crop", "16,16,16", "-C", "enc_channels=[4,4,4,4]", "-C", "dec_channels=[4,4,4,4,4,4,4]"]


def _train(tmp_path, name: str, processes: int) -> list[float]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "atlasreg", "train", "-b", "voxelmorph", "--synth", str(tmp_path / "map*.nii.gz"),
               "--steps", "6", "--batch-size", "2", "--lr", "3e-3", "--cache-dir", str(tmp_path / "cache"), *TINY,
               "-o", str(tmp_path / f"{name}.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)  # a guard against a hang, generous for a loaded machine
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / f"{name}.pt.log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path, affine):
    for i, shift in enumerate([(0, 0, 0), (2, -1, 1)]):
        atlasreg.save(label_map(blob_labels((28, 30, 26), shift=shift), affine), tmp_path / f"map{i}.nii.gz")
    single = _train(tmp_path, "single", 1)  # also fills the shared cache of aligned maps
    double = _train(tmp_path, "double", 2)
    assert len(single) == len(double) == 6
    # each rank synthesizes its share of the same global batch: the curves agree up to float rounding
    assert double == pytest.approx(single, rel=1e-3, abs=1e-5)
    state = torch.load(tmp_path / "double.pt", weights_only=True)
    assert state["training"]["processes"] == 2 and state["step"] == 6
