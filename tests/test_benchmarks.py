"""Every benchmark script answers --help and parses its defaults, and a script with a ``settings``
function builds what it would run from them (TrainSettings, method tables checked against the
plugins' declarations) without running any work: a renamed option or field breaks CI, not a GPU
call (issue 20). The shell scripts run on a lent GPU machine answer --help too."""

import importlib
import subprocess
from pathlib import Path

import click
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: not commands: the code the scripts share, and FireANTs' peer (it runs in FireANTs' own virtual
#: environment, without atlasreg or click; benchmarks/engine.py starts it)
NOT_SCRIPTS = {"common", "fireants_peer"}
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem not in NOT_SCRIPTS)
#: arguments a script requires, so its defaults can be parsed (nothing is read or written)
REQUIRED = {"interrupt": ["--labels", "labelmaps"], "second_renderer": ["out", "1"], "shared_maps": ["out", "1"],
            "summary": [str(BENCHMARKS)], "inference": ["--model", "contrastive=model.pt"], "learned": ["--model", "contrastive=model.pt"],
            "paper_protocol": ["--dataset", "lpba40", "root"], "tune_engine": ["io", "{}"]}


def _commands(command: click.Command) -> list[click.Command]:
    return list(command.commands.values()) if isinstance(command, click.Group) else [command]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_answers_help_and_builds_its_settings(name, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    for command in [module.main, *(_commands(module.main) if isinstance(module.main, click.Group) else [])]:
        with pytest.raises(SystemExit) as done:
            command.main(["--help"], prog_name=name)
        assert done.value.code == 0 and "Usage:" in capsys.readouterr().out
    for command in _commands(module.main):
        context = command.make_context(name, list(REQUIRED.get(command.name if command.name != "main" else name, [])))
        if hasattr(module, "settings"):
            module.settings(**context.params)


@pytest.mark.parametrize("script", ["device.sh", "gpu.sh"])
def test_device_scripts_answer_help(script):
    done = subprocess.run(["bash", str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=60, cwd=BENCHMARKS.parent)
    assert done.returncode == 0 and "lent GPU machine" in done.stdout, done.stderr
