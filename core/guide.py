"""The labelling guide: what each class means, in words the project edits and in pictures.

Why: issue 13 found three of the first 21 answers on ``type`` were guesses, because nothing said
what the classes look like. The guide sits beside the Label page's buttons and has three parts:

- **text**, a markdown file in the workspace (``<workspace>/guide.md``), written from a default
  on first use; the project edits it like any document and the page shows where it is. A
  ``## <attribute>`` heading starts that attribute's section, so each tab shows its own part;
- **reference thumbnails** per class: the newest images whose current label has that class, or
  the demo renderer's picture of the class when none is labelled yet;
- **the orientation convention** and **type silhouettes** drawn by the demo renderer
  (``data.demo.render_reference``), the same geometry the demo pool is made of, so the words,
  the pictures and the data agree on what "left" means.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.labeling import load_display_image
from data.demo import AZIMUTH, BODIES, PAINT, render_reference
from data.schema import LabelSchema
from data.store import ProjectStore
from data.workspace import Workspace

GUIDE_FILE = "guide.md"

# One sentence per default class: what to look for. Classes a project adds get a placeholder.
DEFINITIONS: dict[str, dict[str, str]] = {
    "color": {
        "red": "red or maroon paint", "green": "green paint, any shade",
        "yellow": "yellow or gold paint", "orange": "orange paint",
        "blue": "blue paint, navy to light blue", "purple": "purple or violet paint",
        "black": "black or very dark paint", "white": "white or cream paint",
        "brown": "brown or beige paint", "gray": "gray or silver paint",
    },
    "type": {
        "hatchback": "small car whose roof runs down into a steep rear door; no separate boot",
        "sedan": "three boxes: bonnet, cabin and a separate, lower boot behind the rear window",
        "minivan": "tall one-box people carrier, short bonnet, windows all along the side",
        "van": "commercial van: tall box body, few or no side windows behind the driver",
        "suv": "high ground clearance, large wheels, tall two-box body with an upright tailgate",
        "pickup": "a cab with an open cargo bed behind it",
        "truck": "lorry: separate cab and a box or trailer, far taller than a car, often 3 axles",
        "bus": "long and tall with a row of side windows and side doors",
    },
}

ORIENTATION_CONVENTION = (
    "Orientation names the side of the vehicle you see, **from the vehicle's own point of view** "
    "(as its driver sees left and right), not the side of the picture it is on.\n\n"
    "- **left**: you see the vehicle's left side; its nose points to the **left of the picture**.\n"
    "- **right**: you see its right side; its nose points to the right of the picture.\n"
    "- **front-left**: you see the front *and* the left side (the camera stands ahead of it, "
    "on its left); the nose points toward you and to the picture's left.\n"
    "- **back-left**: you see the back and the left side; the nose points away from you, to "
    "the picture's left.\n"
    "- **front** / **back**: you see (almost) only the front / the back.\n\n"
    "Mirroring a picture turns left into right (front-left into front-right, ...): this is the "
    "flip map training uses to balance orientations. Pick the nearest of the eight 45° views."
)

COLOR_RULES = (
    "Color is the body's paint, not glass, tyres, lights or shadows. Two-tone: the larger "
    "painted area. Judge the paint under the scene's light: a white car in shade is still white."
)


@dataclass(frozen=True)
class Reference:
    """One reference picture for a class: pixels and where they came from."""

    image: np.ndarray
    caption: str
    source: str  # "labelled" (a labelled image of the project) or "demo" (the demo renderer)


def guide_path(ws: Workspace) -> Path:
    return ws.root / GUIDE_FILE


def default_guide(schema: LabelSchema) -> str:
    """The guide's first text: the conventions and one line per class of every attribute."""
    parts = ["# Labelling guide\n",
             "Edit this file to agree on the project's conventions; the Label page shows it "
             "beside the buttons. A `## <attribute>` heading starts that attribute's part.\n",
             "Choose **unsure** only when you cannot tell (hidden, cut off, too dark): an unsure "
             "attribute is stored as missing and not trained on. Nothing is ever unsure by "
             "default.\n"]
    for attr in schema.attributes:
        parts.append(f"## {attr}\n")
        if attr == "color":
            parts.append(COLOR_RULES + "\n")
        if attr == schema.flip_attribute:
            parts.append(ORIENTATION_CONVENTION + "\n")
        defs = DEFINITIONS.get(attr, {})
        parts.append("\n".join(f"- **{c}**: {defs.get(c, '(describe what counts as ' + c + ')')}"
                               for c in schema.classes[attr]) + "\n")
    return "\n".join(parts)


def ensure_guide(ws: Workspace) -> Path:
    """The guide file, written from :func:`default_guide` when it does not exist yet."""
    path = guide_path(ws)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(default_guide(ws.schema), encoding="utf-8")
        tmp.replace(path)
    return path


def read_guide(ws: Workspace) -> str:
    return ensure_guide(ws).read_text(encoding="utf-8")


def guide_sections(text: str) -> dict[str, str]:
    """{attribute heading (lower case): its markdown}; text before the first ``## `` is ``""``."""
    sections: dict[str, list[str]] = {"": []}
    key = ""
    for line in text.splitlines():
        if line.startswith("## "):
            key = line[3:].strip().lower()
            sections.setdefault(key, [])
            continue
        sections[key].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def demo_reference(schema: LabelSchema, attribute: str, value: str, size: int = 64) -> np.ndarray | None:
    """The demo renderer's picture of one class (a gray sedan seen front-left, varying only
    ``attribute``), or None for a class the renderer does not know (a project's own schema)."""
    known = {"color": PAINT, "type": BODIES, schema.flip_attribute: AZIMUTH}.get(attribute)
    if known is None or value not in known:
        return None
    label = {"color": "gray", "type": "sedan", "orientation": "front-left"}
    label["orientation" if attribute == schema.flip_attribute else attribute] = value
    return render_reference(label, size=size)


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray(np.asarray(image))
    pil.thumbnail((size, size), Image.BICUBIC)
    return np.asarray(pil)


def class_references(store: ProjectStore, ws: Workspace, attribute: str, *, per_class: int = 3,
                     size: int = 64) -> dict[str, list[Reference]]:
    """Up to ``per_class`` thumbnails per class of ``attribute``: the newest labelled images of
    that class (current labels), else the demo renderer's picture of it (one), else none."""
    examples = store.label_examples(attribute, per_class)
    records = {im.id: im for im in store.images(ids=[i for ids in examples.values() for i in ids])}
    out: dict[str, list[Reference]] = {}
    for value in ws.schema.classes[attribute]:
        refs: list[Reference] = []
        for image_id in examples.get(value, []):
            record = records.get(image_id)
            if record is None:
                continue
            try:
                pixels = load_display_image(ws, record)
            except (FileNotFoundError, OSError):
                continue
            refs.append(Reference(_thumbnail(pixels, size), record.name, "labelled"))
        if not refs:
            pixels = demo_reference(ws.schema, attribute, value, size)
            if pixels is not None:
                refs.append(Reference(pixels, f"{value} (demo drawing)", "demo"))
        out[value] = refs
    return out


def orientation_pictures(schema: LabelSchema, size: int = 80) -> list[tuple[str, np.ndarray]]:
    """The convention in pictures: one clean drawing per orientation class the renderer knows."""
    return [(value, render_reference({"color": "blue", "type": "sedan", "orientation": value},
                                     size=size))
            for value in schema.classes.get(schema.flip_attribute, ()) if value in AZIMUTH]


def type_silhouettes(schema: LabelSchema, size: int = 80, orientation: str = "left"
                     ) -> list[tuple[str, np.ndarray]]:
    """Each type's outline (side view by default, where the shapes differ most)."""
    return [(value, render_reference({"type": value, "orientation": orientation}, size=size,
                                     silhouette=True))
            for value in schema.classes.get("type", ()) if value in BODIES]
