"""What a plugin subclasses: Backend (registration) and Fusion (label fusion), with declared options.

Options are declared with their defaults so that the CLI (``-O key=value``) and the Python API
validate and parse them the same way, before any work starts.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

from .errors import AtlasregError

if TYPE_CHECKING:
    from .transform import Transform
    from .volume import Volume

#: bounds plugins declare on common kinds of option (beyond them a run is a mistake or would never end)
MAX_ITERATIONS = 100_000
MAX_SEED = 2**31 - 1  # seeds reach C++ libraries as 32-bit integers
MAX_SHRINK = 64  # a coarser pyramid level leaves a brain a few voxels wide


def parse_assignments(pairs: Iterable[str], what: str = "option") -> dict[str, str]:
    """``KEY=VALUE`` texts (from ``-O``, ``-F``, ``--model``, ``NAME:KEY=VALUE`` specs ...) as a dict of strings.

    The one parser of such pairs; values are typed later, by the ``Option`` they set.
    """
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AtlasregError(f"{what} {pair!r}: expected KEY=VALUE")
        parsed[key.strip()] = value.strip()
    return parsed


@dataclass(frozen=True)
class Option:
    """One tunable of a backend or fusion method; the type is the default's type.

    Numbers (and each number of a list) must be finite and lie within ``minimum``..``maximum``;
    ``exclusive_minimum`` makes the lower bound strict (e.g. a fraction in (0, 1]).
    """

    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False

    def __post_init__(self) -> None:
        self._check_range("default", self.default)  # a declaration error shows at import, not in a user's run

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
        if isinstance(default, tuple) and default and not value:
            raise AtlasregError(f"option {name}: give at least one value")
        self._check_range(name, value)
        return value

    def text(self, key: str) -> str:
        """The option as ``atlasreg options`` prints it: ``key=default [choices] (range)`` and its help."""
        default = ",".join(map(str, self.default)) if isinstance(self.default, tuple) else self.default
        choices = f" [{'|'.join(self.choices)}]" if self.choices else ""
        valid = f" ({self.range_text()})" if self.range_text() else ""
        return f"{key}={default}{choices}{valid}\n    {self.help}"

    def range_text(self) -> str:
        """The valid range in words, e.g. ``> 0 and <= 1`` (empty when any value goes)."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return " and ".join(parts)

    def _check_range(self, name: str, value: Any) -> None:
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if isinstance(number, float) and not math.isfinite(number):
                raise AtlasregError(f"option {name}={value!r}: must be a finite number")
            low, high = self.minimum, self.maximum
            too_low = low is not None and (number <= low if self.exclusive_minimum else number < low)
            if too_low or (high is not None and number > high):
                raise AtlasregError(f"option {name}={value!r}: must be {self.range_text()}")


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return "a comma-separated list of numbers"
    return {bool: "true or false", int: "an integer", float: "a number"}.get(type(default), "text")


class Method:
    """Shared by backends and fusion methods: a name, declared options, required modules."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    #: the command that installs the packages ``requires`` names, shown when one is missing
    #: (e.g. ``pip install 'atlasreg[ants]'`` for a first-party plugin on an optional extra)
    install: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    #: same inputs, options and seed give the same bytes on CPU (claimed only where tested)
    deterministic: ClassVar[bool] = False
    #: options renamed: old name -> new name; the old one is still read, with a warning
    renamed: ClassVar[Mapping[str, str]] = {}

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run here (a missing module, and the command that installs it), or None when it can."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the Python package providing '{module}' (not installed)" + (f": {self.install}" if self.install else "")
        return None

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``; unknown names and bad values raise AtlasregError. A renamed
        option's old name is read as its new one (a warning says so); giving both is refused."""
        for old, new in self.renamed.items():
            if old in given:
                if new in given:
                    raise AtlasregError(f"{self.name}: give {new} (or its old name {old}), not both")
                logging.getLogger(__name__).warning("%s: option %s is now called %s (the old name is deprecated)", self.name, old, new)
                given = {(new if key == old else key): value for key, value in given.items()}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise AtlasregError(f"{self.name}: unknown option {', '.join(unknown)} (known: {known})")
        resolved = {key: opt.default for key, opt in self.options.items()}
        resolved.update({key: self.options[key].parse(key, value) for key, value in given.items()})
        self.check_options(resolved)
        return resolved

    def check_options(self, resolved: Mapping[str, Any]) -> None:
        """Checks that span options or need more than one value's range (e.g. a required file);
        raise AtlasregError. Runs in ``resolve_options``, so before any work starts."""


class Backend(Method):
    """A registration method: ``register(moving, fixed)`` returns the Transform pulling moving onto fixed."""

    kind: ClassVar[str] = "classical"  # or "learned" (runs a trained model)
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


@dataclass(frozen=True)
class ModelSpec:
    """A named model a plugin ships or points to: a file written by ``atlasreg train`` and its checksum.

    ``default=True`` makes it what its backend uses when no model is given (one per backend).
    """

    name: str
    backend: str
    file: str  # absolute path (e.g. package data beside the plugin)
    sha256: str
    description: str
    default: bool = False
