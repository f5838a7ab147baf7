"""Schema: classes, aliases from real exports, unknown values named, flip map, schema files."""
from __future__ import annotations

import json

import pytest

from data.schema import (DEFAULT_CLASSES, DEFAULT_SCHEMA, SchemaError, UnknownValueError,
                         default_schema, load_schema)


def test_default_classes_match_the_product() -> None:
    assert DEFAULT_SCHEMA.attributes == ("color", "type", "orientation")
    assert DEFAULT_SCHEMA.num_classes("color") == 10
    assert DEFAULT_SCHEMA.num_classes("type") == 8
    assert DEFAULT_SCHEMA.num_classes("orientation") == 8
    assert DEFAULT_SCHEMA.index("type", "bus") == DEFAULT_CLASSES["type"].index("bus")


@pytest.mark.parametrize("attr,raw,expected", [
    ("orientation", "fl", "front-left"), ("orientation", "FR", "front-right"),
    ("orientation", "bl", "back-left"), ("orientation", "br", "back-right"),
    ("orientation", "Front Left", "front-left"), ("orientation", "rear_right", "back-right"),
    ("orientation", "  Back  ", "back"), ("color", "Grey", "gray"), ("color", "WHITE", "white"),
    ("type", "Pick-Up", "pickup"), ("type", "SUV", "suv"),
])
def test_aliases_and_case(attr: str, raw: str, expected: str) -> None:
    assert DEFAULT_SCHEMA.normalise_value(attr, raw) == expected


def test_empty_values_mean_not_labelled() -> None:
    assert DEFAULT_SCHEMA.normalise_value("color", "") is None
    assert DEFAULT_SCHEMA.normalise_value("color", None) is None
    assert DEFAULT_SCHEMA.normalise_label({"color": "red", "type": " ", "orientation": None}) == {
        "color": "red"}


def test_unknown_value_names_value_and_item() -> None:
    with pytest.raises(UnknownValueError) as err:
        DEFAULT_SCHEMA.normalise_label({"color": "teal"}, item="images/c00042.jpg")
    text = str(err.value)
    assert "'teal'" in text and "images/c00042.jpg" in text and "color" in text
    assert err.value.item == "images/c00042.jpg" and err.value.value == "teal"
    with pytest.raises(UnknownValueError, match="attribute"):
        DEFAULT_SCHEMA.normalise_value("size", "big", item="x.jpg")


def test_silver_only_when_configured() -> None:
    with pytest.raises(UnknownValueError):
        DEFAULT_SCHEMA.normalise_value("color", "silver")
    assert default_schema(optional_aliases=True).normalise_value("color", "Silver") == "gray"


def test_flip_map_is_an_involution_on_orientation() -> None:
    s = DEFAULT_SCHEMA
    assert s.flip_value("left") == "right" and s.flip_value("front-left") == "front-right"
    assert s.flip_value("back-right") == "back-left"
    assert s.flip_value("front") == "front" and s.flip_value("back") == "back"
    for name in s.classes["orientation"]:
        assert s.flip_value(s.flip_value(name)) == name


def test_schema_file_with_own_classes(tmp_path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"attributes": {
        "color": ["red", "gray", "black", "white"],
        "orientation": ["front", "back", "left", "right"]}}))
    s = load_schema(path)
    assert s.classes["color"] == ("red", "gray", "black", "white")
    assert s.normalise_value("color", "grey") == "gray"          # inherited alias
    assert s.normalise_value("orientation", "rear") == "back"
    assert s.flip_value("left") == "right"                     # inherited flip map, restricted
    assert "front-left" not in s.flip_map
    with pytest.raises(UnknownValueError):
        s.normalise_value("color", "blue")                     # not a class of this project


def test_schema_file_own_aliases_and_round_trip(tmp_path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({
        "attributes": {"color": ["dark", "light"], "type": ["car", "truck"]},
        "aliases": {"color": {"black": "dark", "white": "light"}}}))
    s = load_schema(path)
    assert s.normalise_value("color", "Black") == "dark"
    again = type(s).from_dict(s.to_dict())
    assert again == s


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"classes": {}}', "attributes"),
    ('{"attributes": {"color": ["red"]}}', "at least two"),
    ('{"attributes": {"color": ["red", "red"]}}', "twice"),
    ('{"attributes": {"color": ["red", "blue"]}, "aliases": {"color": {"x": "pink"}}}', "alias"),
    ('{"attributes": {"orientation": ["left", "right"]}, "flip_map": {"left": "up"}}', "flip map"),
])
def test_bad_schema_files_are_refused(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SchemaError, match=message) as err:
        load_schema(path)
    assert "bad.json" in str(err.value)


def test_missing_schema_file(tmp_path) -> None:
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(tmp_path / "nope.json")
