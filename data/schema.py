"""The label schema: attributes, their classes, value aliases and the orientation flip map.

This module is the single source of truth for class names. Everything else (model heads, CVAT
label spec, charts, Datumaro mapping) derives from a :class:`LabelSchema` instance, normally
``DEFAULT_SCHEMA`` or one a project loads from a JSON file with :func:`load_schema`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

ATTRIBUTES: tuple[str, ...] = ("color", "type", "orientation")

DEFAULT_CLASSES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "yellow", "orange", "blue", "purple", "black", "white", "brown", "gray"),
    "type": ("hatchback", "sedan", "minivan", "van", "suv", "pickup", "truck", "bus"),
    "orientation": (
        "front", "back", "left", "right", "front-left", "front-right", "back-left", "back-right",
    ),
}

# Spellings seen in real exports. Keys are normalised (see _normalise) before lookup.
DEFAULT_ALIASES: dict[str, dict[str, str]] = {
    "color": {"grey": "gray"},
    "type": {"pick-up": "pickup", "pick up": "pickup", "minibus": "minivan", "lorry": "truck"},
    "orientation": {
        "f": "front", "b": "back", "rear": "back", "l": "left", "r": "right",
        "fl": "front-left", "fr": "front-right", "bl": "back-left", "br": "back-right",
        "front left": "front-left", "front right": "front-right",
        "back left": "back-left", "back right": "back-right",
        "rear left": "back-left", "rear right": "back-right",
        "rear-left": "back-left", "rear-right": "back-right",
    },
}

# Aliases that change meaning (silver is not strictly gray); applied only when a project opts in.
OPTIONAL_ALIASES: dict[str, dict[str, str]] = {
    "color": {"silver": "gray", "beige": "brown", "gold": "yellow", "golden": "yellow"},
}

# Mirroring an image left-to-right turns a left view into a right view, and so on.
DEFAULT_FLIP_MAP: dict[str, str] = {
    "left": "right", "right": "left",
    "front-left": "front-right", "front-right": "front-left",
    "back-left": "back-right", "back-right": "back-left",
    "front": "front", "back": "back",
}


class UnknownValueError(ValueError):
    """A label value that is neither a class nor an alias of one."""

    def __init__(self, attribute: str, value: object, item: str | None = None,
                 allowed: Iterable[str] = ()) -> None:
        where = f" for item {item!r}" if item else ""
        allowed_txt = ", ".join(allowed)
        super().__init__(
            f"unknown {attribute} value {value!r}{where}; expected one of: {allowed_txt}"
        )
        self.attribute = attribute
        self.value = value
        self.item = item


class SchemaError(ValueError):
    """A schema file that cannot be used."""


def _normalise(value: str) -> str:
    return re.sub(r"[\s_]+", " ", value.strip().lower())


@dataclass(frozen=True)
class LabelSchema:
    """Attributes with ordered class lists (the order is the model's output index)."""

    classes: Mapping[str, tuple[str, ...]]
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    flip_map: Mapping[str, str] = field(default_factory=dict)
    flip_attribute: str = "orientation"

    def __post_init__(self) -> None:
        if not self.classes:
            raise SchemaError("a schema needs at least one attribute")
        for attr, names in self.classes.items():
            if len(names) < 2:
                raise SchemaError(f"attribute {attr!r} needs at least two classes")
            if len(set(names)) != len(names):
                raise SchemaError(f"attribute {attr!r} lists a class twice")
            for alias_target in self.aliases.get(attr, {}).values():
                if alias_target not in names:
                    raise SchemaError(f"alias target {alias_target!r} is not a {attr} class")
        if self.flip_map:
            names = set(self.classes.get(self.flip_attribute, ()))
            bad = {k for k in self.flip_map if k not in names} | {
                v for v in self.flip_map.values() if v not in names}
            if bad:
                raise SchemaError(f"flip map names unknown {self.flip_attribute} classes: {sorted(bad)}")

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def num_classes(self, attribute: str) -> int:
        return len(self.classes[attribute])

    def index(self, attribute: str, value: str) -> int:
        return self.classes[attribute].index(value)

    def normalise_value(self, attribute: str, value: object, item: str | None = None) -> str | None:
        """Map a raw value (class, alias, any case) to a class name.

        Empty values mean "not labelled" and return None. Anything else that is not a class
        or alias raises :class:`UnknownValueError` naming the value and the item.
        """
        if attribute not in self.classes:
            raise UnknownValueError("attribute", attribute, item, self.attributes)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UnknownValueError(attribute, value, item, self.classes[attribute])
        if not value.strip():
            return None
        key = _normalise(value)
        for name in self.classes[attribute]:
            if _normalise(name) == key:
                return name
        for alias, target in self.aliases.get(attribute, {}).items():
            if _normalise(alias) == key:
                return target
        raise UnknownValueError(attribute, value, item, self.classes[attribute])

    def normalise_label(self, values: Mapping[str, object], item: str | None = None) -> dict[str, str]:
        """Normalise a partial label {attribute: raw value}; missing/empty values are dropped."""
        out: dict[str, str] = {}
        for attr, raw in values.items():
            name = self.normalise_value(attr, raw, item)
            if name is not None:
                out[attr] = name
        return out

    def flip_value(self, value: str) -> str:
        """The flip-attribute class an image shows after a horizontal mirror."""
        return self.flip_map.get(value, value)

    def to_dict(self) -> dict:
        return {
            "attributes": {a: list(c) for a, c in self.classes.items()},
            "aliases": {a: dict(m) for a, m in self.aliases.items()},
            "flip_map": dict(self.flip_map),
            "flip_attribute": self.flip_attribute,
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, optional_aliases: bool = False) -> "LabelSchema":
        """Build a schema from a dict (the JSON file format; see docs/SCHEMA.md)."""
        try:
            attrs = data["attributes"]
            classes = {str(a): tuple(str(c) for c in names) for a, names in attrs.items()}
        except (KeyError, AttributeError, TypeError) as exc:
            raise SchemaError("schema file needs an 'attributes' object of class lists") from exc
        aliases = {a: dict(m) for a, m in data.get("aliases", {}).items()}
        if optional_aliases or data.get("optional_aliases"):
            for attr, extra in OPTIONAL_ALIASES.items():
                if attr in classes:
                    merged = {k: v for k, v in extra.items() if v in classes[attr]}
                    merged.update(aliases.get(attr, {}))
                    aliases[attr] = merged
        flip_attr = data.get("flip_attribute", "orientation")
        flip = dict(data.get("flip_map", {}))
        return cls(classes=classes, aliases=aliases, flip_map=flip, flip_attribute=flip_attr)


def default_schema(*, optional_aliases: bool = False) -> LabelSchema:
    """The product's default classes (DEVELOPERS.md), with the default aliases and flip map."""
    return LabelSchema.from_dict(
        {
            "attributes": {a: list(c) for a, c in DEFAULT_CLASSES.items()},
            "aliases": DEFAULT_ALIASES,
            "flip_map": DEFAULT_FLIP_MAP,
        },
        optional_aliases=optional_aliases,
    )


DEFAULT_SCHEMA = default_schema()


def load_schema(path: str | Path) -> LabelSchema:
    """Load a project's own class lists from a JSON file.

    Format: ``{"attributes": {"color": [...], ...}, "aliases": {"color": {"grey": "gray"}},
    "flip_map": {...}, "optional_aliases": false}``. Attributes missing ``aliases``/``flip_map``
    inherit the defaults when their class lists contain the default targets.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"schema file {path} must hold a JSON object")
    data = dict(data)
    attrs = data.get("attributes")
    if isinstance(attrs, dict):
        aliases = {a: dict(m) for a, m in data.get("aliases", {}).items()}
        for attr, defaults in DEFAULT_ALIASES.items():
            if attr in attrs and attr not in aliases:
                aliases[attr] = {k: v for k, v in defaults.items() if v in attrs[attr]}
        data["aliases"] = aliases
        flip_attr = data.get("flip_attribute", "orientation")
        if "flip_map" not in data and flip_attr in attrs:
            names = set(attrs[flip_attr])
            data["flip_map"] = {k: v for k, v in DEFAULT_FLIP_MAP.items() if k in names and v in names}
    try:
        return LabelSchema.from_dict(data)
    except SchemaError as exc:
        raise SchemaError(f"schema file {path}: {exc}") from None
