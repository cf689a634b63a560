"""Plugin discovery through the entry-point group, and broken plugins reported instead of fatal."""

import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest

import atlasreg
from atlasreg import AtlasregError, registry
from atlasreg.plugin_api import Option


@pytest.fixture
def extra_plugins(tmp_path, monkeypatch):
    """Install two plugins into a fake distribution's entry points: one working, one broken."""
    (tmp_path / "good_plugin.py").write_text(
        textwrap.dedent(
            """
            from atlasreg.hookspecs import hookimpl
            from atlasreg.plugin_api import Backend, Option
            from atlasreg.transform import Transform

            class Shift(Backend):
                name = "shift"
                description = "test backend: a fixed translation"
                options = {"mm": Option(1.0, "translation along x")}

                def register(self, moving, fixed, **options):
                    import numpy as np
                    matrix = np.eye(4)
                    matrix[0, 3] = options["mm"]
                    return Transform.from_matrix(fixed, matrix)

            @hookimpl
            def atlasreg_backends():
                return [Shift()]
            """
        )
    )
    (tmp_path / "broken_plugin.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == registry.ENTRY_POINT_GROUP:
            found += [
                metadata.EntryPoint("shift", "good_plugin", registry.ENTRY_POINT_GROUP),
                metadata.EntryPoint("broken", "broken_plugin", registry.ENTRY_POINT_GROUP),
            ]
        return found

    monkeypatch.setattr(registry, "entry_points", entry_points)
    registry.registry.cache_clear()
    yield
    registry.registry.cache_clear()
    sys.modules.pop("good_plugin", None)


def test_first_party_backends_come_through_the_entry_point_group():
    entry_points = {ep.name: ep.value for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    infos = {info.name: info for info in atlasreg.backends()}
    for name, plugin in (("affine", "affine"), ("svf", "svf"), ("simpleitk", "simpleitk"), ("ants", "ants")):
        optional = name in ("simpleitk", "ants")  # extras: without them, unavailable with the install line
        assert infos[name].available or (optional and "pip install 'atlasreg[" in infos[name].reason), infos[name].reason
        assert infos[name].plugin == plugin and entry_points[plugin] == f"atlasreg_plugins.{plugin}"
    fusions = {info.name: info for info in atlasreg.fusions()}
    assert fusions["majority"].available and fusions["weighted"].available
    assert all(fusions[name].available or "pip install 'atlasreg[" in fusions[name].reason for name in ("staple", "jlf"))


def test_entry_point_plugin_is_discovered_and_used(extra_plugins, pair):
    moving, _, fixed, _ = pair
    infos = {info.name: info for info in atlasreg.backends()}
    assert infos["shift"].available and infos["shift"].plugin == "shift"
    transform = atlasreg.register(moving, fixed, backend="shift", options={"mm": 3.0})
    assert transform.matrix[0, 3] == 3.0


def test_broken_plugin_is_reported_not_fatal(extra_plugins):
    infos = {info.name: info for info in atlasreg.backends()}
    assert not infos["broken"].available
    assert "a_module_that_does_not_exist" in infos["broken"].reason
    assert infos["affine"].available  # the rest keeps working
    with pytest.raises(AtlasregError, match="unavailable"):
        registry.get_backend("broken")


def test_missing_dependency_marks_backend_unavailable(monkeypatch):
    from atlasreg_plugins.ants.backend import AntsBackend

    monkeypatch.setattr(AntsBackend, "requires", ("no_such_module_xyz",))
    infos = {info.name: info for info in atlasreg.backends()}
    assert not infos["ants"].available and "no_such_module_xyz" in infos["ants"].reason
    with pytest.raises(AtlasregError, match="unavailable"):
        registry.get_backend("ants")


def test_unknown_backend_and_fusion():
    with pytest.raises(AtlasregError, match="unknown backend 'nope'"):
        registry.get_backend("nope")
    with pytest.raises(AtlasregError, match="unknown fusion 'nope'"):
        registry.get_fusion("nope")


def test_options_are_validated_and_parsed():
    backend = registry.get_backend("ants")
    resolved = backend.resolve_options({"preset": "fast", "iterations": "10,5,0", "seed": "3"})
    assert resolved["iterations"] == (10, 5, 0) and resolved["seed"] == 3 and resolved["preset"] == "fast"
    with pytest.raises(AtlasregError, match="unknown option"):
        backend.resolve_options({"colour": "red"})
    with pytest.raises(AtlasregError, match="choose one of"):
        backend.resolve_options({"preset": "slowest"})
    with pytest.raises(AtlasregError, match="integer"):
        backend.resolve_options({"seed": "three"})
    assert Option(False, "").parse("flag", "yes") is True
