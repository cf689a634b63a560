"""Plugin discovery through the entry-point group, and broken plugins reported instead of fatal."""

import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest

import atlasreg
from atlasreg import AtlasregError, registry
from atlasreg.hookspecs import hookimpl
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


class _Declares:
    """A plugin object registered in code: a protocol, an atlas and a dataset reader of its own."""

    def __init__(self, tmp_path):
        from atlasreg.atlases import BuiltinAtlas
        from atlasreg.datasets import Dataset, DatasetReader, Subject
        from atlasreg.lut import LabelInfo
        from atlasreg.protocols import Protocol

        self.protocol = Protocol("two-blobs", (1, 2), {"both": (1, 2)}, "labels", "test protocol")
        labels = {1: LabelInfo("blob-a", (255, 0, 0)), 2: LabelInfo("blob-b", (0, 255, 0))}
        self.atlas = BuiltinAtlas("toy-atlas", "test atlas", 2, ("made here",), ("none",), build=lambda: None, labels=lambda: labels)
        self.reader = DatasetReader("toy-kind", lambda root: Dataset("toy", root, (Subject("s1", root / "s1.nii.gz", None),), "two-blobs"))

    @hookimpl
    def atlasreg_protocols(self):
        return [self.protocol]

    @hookimpl
    def atlasreg_atlases(self):
        return [self.atlas]

    @hookimpl
    def atlasreg_dataset_readers(self):
        return [self.reader]


@pytest.fixture
def declared(tmp_path):
    plugin = _Declares(tmp_path)
    name = registry.register_plugin(plugin, "declares")
    yield plugin
    registry.unregister_plugin(plugin)
    assert name == "declares"


def test_protocols_atlases_and_readers_come_from_plugins_registered_in_code(declared, tmp_path):
    from atlasreg.atlases import label_names, list_atlases
    from atlasreg.datasets import open_dataset
    from atlasreg.protocols import get_protocol
    from atlasreg.volume import label_map

    assert get_protocol("two-blobs") is declared.protocol
    truth = label_map(np.pad(np.ones((4, 4, 4), np.int32), 2) * 1 + np.pad(np.ones((2, 2, 2), np.int32), 3), np.eye(4))
    by_object = atlasreg.evaluate(truth, truth, declared.protocol)  # a Protocol object, not only a name
    assert by_object == atlasreg.evaluate(truth, truth, "two-blobs") and by_object["protocol"] == "two-blobs"
    assert "toy-atlas" in {atlas.name for atlas in list_atlases()}
    assert label_names("toy-atlas") == {1: "blob-a", 2: "blob-b"}  # the atlas asked for, not the default one's
    assert "Left-Caudate" in label_names("mni152-dk").values()
    assert open_dataset("toy-kind", tmp_path).protocol == "two-blobs"


def test_unregistered_plugin_is_gone(tmp_path):
    from atlasreg.protocols import get_protocol

    plugin = _Declares(tmp_path)
    registry.register_plugin(plugin)
    registry.unregister_plugin(plugin)
    with pytest.raises(AtlasregError, match="unknown protocol 'two-blobs'"):
        get_protocol("two-blobs")


def test_a_name_two_plugins_declare_is_an_error_naming_both(tmp_path):
    from atlasreg.protocols import Protocol, get_protocol
    from atlasreg_plugins.affine import AffineBackend

    class Clash:
        @hookimpl
        def atlasreg_backends(self):
            return [AffineBackend()]

    with pytest.raises(AtlasregError, match=r"backend 'affine' is declared by two plugins, affine and clash"):
        registry.register_plugin(Clash(), "clash")
    assert atlasreg.backends()  # refused and not kept: the registry still works

    class Shadow:
        @hookimpl
        def atlasreg_protocols(self):
            return [Protocol("aseg", None, {}, "labels", "a second aseg")]

    get_protocol("aseg")  # atlasreg's own protocols are registered by their first look-up
    with pytest.raises(AtlasregError, match=r"protocol 'aseg' is declared by two plugins, atlasreg.protocols and shadow"):
        registry.register_plugin(Shadow(), "shadow")
    assert get_protocol("aseg").description.startswith("28 FreeSurfer")


def test_svf_shrink_factors_and_its_deprecated_old_name(caplog):
    svf = registry.get_backend("svf")
    assert svf.resolve_options({"shrink_factors": "2,1", "iterations": "3,1"})["shrink_factors"] == (2, 1)
    with caplog.at_level("WARNING", logger="atlasreg"):
        old = svf.resolve_options({"levels": "2,1", "iterations": "3,1"})
    assert old["shrink_factors"] == (2, 1) and "levels" not in old and "now called shrink_factors" in caplog.text
    with pytest.raises(AtlasregError, match="not both"):
        svf.resolve_options({"levels": "2,1", "shrink_factors": "2,1"})
    with pytest.raises(AtlasregError, match="shrink_factors=1,2: need shrink factors coarse to fine"):
        svf.resolve_options({"shrink_factors": "1,2", "iterations": "3,1"})
