"""Our CVAT label spec (one ``vehicle`` tag, one select attribute per schema attribute).

The spec is derived from the schema, never written by hand, and compared with what the server
has before anything is pushed: a project whose ``color`` lacks ``purple`` or whose attribute was
renamed ``colour`` would let annotators produce labels we must reject, so we refuse and say
exactly what differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from data.schema import LabelSchema
from cvat_bridge.client import Connection, CvatError, CvatNotFound, translate_errors

TAG_LABEL = "vehicle"
META_PROJECT_KEY = "cvat.project_id:"


class SpecMismatch(CvatError):
    """The server's labels differ from ours; ``differences`` lists each one."""

    def __init__(self, where: str, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(f"{where} does not match our label spec, so nothing was pushed: "
                         + "; ".join(differences))


# "Not given": CVAT fills every attribute a tag leaves out with the spec's ``default_value``
# whenever it reads or exports annotations (trace h). A real class as default would turn "the
# model was unsure, it left colour out" into "red", so our attributes have no default: CVAT
# stores that as "" and reports a left-out attribute as "", which pull reads as missing.
NOT_GIVEN = ""


def label_spec(schema: LabelSchema) -> list[dict[str, Any]]:
    """The ``labels`` body for ``POST /api/projects`` (as in the trace's flow b).

    ``default_value`` is left out on purpose: CVAT 2.23 then stores ``""`` (trace h), which
    makes "not given" representable (see NOT_GIVEN).
    """
    return [{
        "name": TAG_LABEL,
        "type": "tag",
        "attributes": [
            {"name": attr, "mutable": False, "input_type": "select",
             "values": list(schema.classes[attr])}
            for attr in schema.attributes
        ],
    }]


def attribute_defaults(server_labels: Iterable[Any]) -> dict[str, str]:
    """{attribute: default_value} of the server's tag label (our ``vehicle``)."""
    for lb in (_as_dict(x) for x in server_labels):
        if str(lb.get("name", "")).lower() == TAG_LABEL:
            return {a["name"]: str(a.get("default_value") or "") for a in lb.get("attributes", [])}
    return {}


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if to_dict else dict(obj)


def compare_labels(schema: LabelSchema, server_labels: Iterable[Any]) -> list[str]:
    """Every difference between the server's labels and our spec, as readable sentences."""
    labels = [_as_dict(lb) for lb in server_labels]
    diffs: list[str] = []
    vehicle = next((lb for lb in labels if lb.get("name") == TAG_LABEL), None)
    if vehicle is None:
        names = ", ".join(repr(lb.get("name")) for lb in labels) or "none"
        return [f"label {TAG_LABEL!r} is missing (server labels: {names})"]
    if vehicle.get("type") not in ("tag", None):
        diffs.append(f"label {TAG_LABEL!r} has type {vehicle.get('type')!r}, expected 'tag'")
    server_attrs = {a["name"]: a for a in vehicle.get("attributes", [])}
    ours = set(schema.attributes)
    missing = [a for a in schema.attributes if a not in server_attrs]
    extra = [a for a in server_attrs if a not in ours]
    for attr in missing:
        twin = next((e for e in extra if set(server_attrs[e].get("values", [])) ==
                     set(schema.classes[attr])), None)
        if twin is not None:
            diffs.append(f"attribute {attr!r} is missing; the server has {twin!r} with the same "
                         f"values (renamed?)")
        else:
            diffs.append(f"attribute {attr!r} is missing")
    for attr in extra:
        diffs.append(f"server attribute {attr!r} is not in our schema")
    for attr in schema.attributes:
        a = server_attrs.get(attr)
        if a is None:
            continue
        if a.get("input_type") != "select":
            diffs.append(f"attribute {attr!r} is {a.get('input_type')!r}, expected 'select'")
        values = list(a.get("values", []))
        lacking = [v for v in schema.classes[attr] if v not in values]
        unknown = [v for v in values if v not in schema.classes[attr]]
        if lacking:
            diffs.append(f"attribute {attr!r} lacks values {lacking}")
        if unknown:
            diffs.append(f"attribute {attr!r} has values we do not know {unknown}")
        default = str(a.get("default_value") or NOT_GIVEN)
        if default != NOT_GIVEN:
            diffs.append(f"attribute {attr!r} defaults to {default!r}: CVAT reports that value "
                         f"for every tag that leaves {attr} out (e.g. an unsure pre-label), so "
                         "it cannot be told from a real answer; clear the default in CVAT")
    others = [lb.get("name") for lb in labels if lb.get("name") != TAG_LABEL]
    if others:
        diffs.append(f"extra labels {others} (annotators could tag images with them)")
    return diffs


@dataclass
class ProjectInfo:
    id: int
    name: str
    created: bool


def default_project_name(ws_root_name: str) -> str:
    return f"cargroup {ws_root_name}"


def find_project(conn: Connection, store: Any, name: str, *, named: bool) -> Any | None:
    """The project to use: a named one wins; the remembered id only stands in for the default.

    ``named`` is True when the user chose ``name`` (``--project``, ``CVAT_PROJECT``, the
    ``project`` key of cvat.json). Then the remembered id is used only if that project still
    has this name; otherwise the project is looked up by name (issue 12, defect 2). Without a
    chosen name the remembered project is used even if it was renamed in CVAT.
    """
    client = conn.client
    project = None
    remembered = store.get_meta(META_PROJECT_KEY + conn.host)
    if remembered:
        try:
            project = client.projects.retrieve(int(remembered))
        except Exception as exc:  # noqa: BLE001 - only 404 means "gone"; re-raise others
            if getattr(exc, "status", None) != 404:
                raise
            project = None
        if project is not None and named and project.name != name:
            project = None
    if project is None:
        matches = [p for p in client.projects.list(name=name) if p.name == name]
        project = matches[0] if matches else None
    return project


def ensure_project(conn: Connection, store: Any, schema: LabelSchema, name: str, *,
                   named: bool = True) -> ProjectInfo:
    """Find (see :func:`find_project`) or create the project; refuse on spec mismatch."""
    client = conn.client
    key = META_PROJECT_KEY + conn.host
    with translate_errors(conn.host, "find the CVAT project"):
        project = find_project(conn, store, name, named=named)
        created = False
        if project is None:
            project = client.projects.create({"name": name, "labels": label_spec(schema)})
            created = True
        diffs = compare_labels(schema, project.get_labels())
    if diffs:
        raise SpecMismatch(f"CVAT project #{project.id} {project.name!r}", diffs)
    with store.transaction():
        store.set_meta(key, str(project.id))
    return ProjectInfo(id=int(project.id), name=str(project.name), created=created)


def check_task_spec(conn: Connection, schema: LabelSchema, task_id: int) -> list[str]:
    """Differences between a task's labels and our spec (empty when they match)."""
    with translate_errors(conn.host, f"read the labels of task {task_id}"):
        try:
            task = conn.client.tasks.retrieve(task_id)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 404:
                raise CvatNotFound(f"task {task_id} does not exist on {conn.host}") from None
            raise
        return compare_labels(schema, task.get_labels())
