"""Docs the code cites exist and agree with the code (issue 11, defect 12)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.job_runners import ENV_JOB_THREADS, job_threads
from data.schema import DEFAULT_ALIASES, DEFAULT_CLASSES, LabelSchema, load_schema

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("data", "models", "cvat_bridge", "core", "app", "benchmarks", "tests", "docs")
           if (REPO / d).is_dir() for p in (REPO / d).rglob("*") if p.suffix in (".py", ".md")]
SOURCES += [REPO / "README.md"]


def test_every_cited_doc_exists() -> None:
    cited: dict[str, list[str]] = {}
    for path in SOURCES:
        for ref in re.findall(r"docs/[A-Za-z_]+\.md", path.read_text(encoding="utf-8")):
            cited.setdefault(ref, []).append(str(path.relative_to(REPO)))
    assert "docs/SCHEMA.md" in cited
    missing = {ref: files for ref, files in cited.items() if not (REPO / ref).is_file()}
    assert not missing, missing


def _schema_doc() -> str:
    return (REPO / "docs" / "SCHEMA.md").read_text(encoding="utf-8")


def test_schema_doc_lists_the_default_classes_in_order() -> None:
    text = _schema_doc()
    for attr, classes in DEFAULT_CLASSES.items():
        assert f"| `{attr}` | {', '.join(classes)} |" in text, attr


def test_schema_doc_names_every_default_alias() -> None:
    text = _schema_doc()
    for attr, mapping in DEFAULT_ALIASES.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{attr}` |")
                   and "→" in line)
        for alias in mapping:
            assert re.search(rf"(\| |, |; ){re.escape(alias)}(,| →)", row), (attr, alias)


def test_schema_doc_example_file_loads(tmp_path: Path) -> None:
    example = re.search(r"```json\n(.*?)```", _schema_doc(), re.S).group(1)
    path = tmp_path / "schema.json"
    path.write_text(example, encoding="utf-8")
    schema = load_schema(path)
    assert isinstance(schema, LabelSchema)
    assert schema.classes["type"] == ("car", "van", "truck", "bus")
    assert schema.normalise_value("type", "Coach") == "bus"
    assert schema.normalise_value("color", "grey") == "gray"   # inherited default alias
    assert json.loads(example)["flip_attribute"] == schema.flip_attribute


@pytest.mark.parametrize(("env", "cpus", "expected"), [
    ({}, 8, 7), ({}, 2, 1), ({}, 1, 1), ({ENV_JOB_THREADS: "3"}, 8, 3), ({ENV_JOB_THREADS: "0"}, 8, 1),
])
def test_job_threads_leave_a_core_to_the_dashboard(env, cpus, expected) -> None:
    """The docstring promises the dashboard keeps a core; the default used to take them all."""
    assert job_threads(env, cpus) == expected
