"""What a plugin subclasses: Backend (registration) and Fusion (label fusion), with declared options.

Options are declared with their defaults so that the CLI (``-O key=value``) and the Python API
validate and parse them the same way, before any work starts.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from .errors import AtlasregError

if TYPE_CHECKING:
    from .transform import Transform
    from .volume import Volume


@dataclass(frozen=True)
class Option:
    """One tunable of a backend or fusion method; the type is the default's type."""

    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def parse(self, name: str, value: Any) -> Any:
        """Turn ``value`` (possibly a command-line string) into the default's type, or fail clearly."""
        default = self.default
        try:
            if isinstance(value, str):
                if isinstance(default, bool):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError
                    value = value.lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, tuple):
                    kind = type(default[0]) if default else int
                    value = tuple(kind(v) for v in value.split(",") if v.strip())
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
        except ValueError:
            raise AtlasregError(f"option {name}={value!r}: expected {_type_name(default)}") from None
        if default is not None and not isinstance(value, type(default)):
            raise AtlasregError(f"option {name}={value!r}: expected {_type_name(default)}")
        if self.choices is not None and value not in self.choices:
            raise AtlasregError(f"option {name}={value!r}: choose one of {', '.join(self.choices)}")
        return value


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return "a comma-separated list of numbers"
    return {bool: "true or false", int: "an integer", float: "a number"}.get(type(default), "text")


class Method:
    """Shared by backends and fusion methods: a name, declared options, required modules."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Option]] = {}
    #: same inputs, options and seed give the same bytes on CPU (claimed only where tested)
    deterministic: ClassVar[bool] = False

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run here (a missing module), or None when it can."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the Python package providing '{module}' (not installed)"
        return None

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``; unknown names and bad values raise AtlasregError."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise AtlasregError(f"{self.name}: unknown option {', '.join(unknown)} (known: {known})")
        resolved = {key: opt.default for key, opt in self.options.items()}
        resolved.update({key: self.options[key].parse(key, value) for key, value in given.items()})
        return resolved


class Backend(Method):
    """A registration method: ``register(moving, fixed)`` returns the Transform pulling moving onto fixed."""

    kind: ClassVar[str] = "classical"  # or "learned" (needs a model file)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def register(self, moving: "Volume", fixed: "Volume", **options: Any) -> "Transform":
        raise NotImplementedError


class Fusion(Method):
    """A label-fusion method: combines atlas label maps already warped onto the target grid."""

    def fuse(
        self,
        target: "Volume",
        images: Sequence["Volume"],
        labels: Sequence["Volume"],
        **options: Any,
    ) -> "Volume":
        raise NotImplementedError
