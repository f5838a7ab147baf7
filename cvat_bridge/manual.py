"""The manual route: a round as a zip a team uploads to CVAT by hand.

For teams whose CVAT the app cannot reach. The zip holds the round's images under the same
unique names the bridge would upload (``<image id>_<name>``, so ``import-datumaro`` maps CVAT's
export back without ambiguity), ``labels.json`` for CVAT's raw label editor, ``manifest.csv``
and a README with the label spec and the steps.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import UserError
from data.schema import LabelSchema
from data.naming import upload_name
from cvat_bridge.spec import TAG_LABEL, label_spec


@dataclass
class ManualExport:
    path: Path
    round_number: int
    images: int
    missing: list[str]
    skipped_labelled: int = 0     # images of the round that already had a label (left out)

    def summary(self) -> str:
        miss = f"; {len(self.missing)} image file(s) missing and left out" if self.missing else ""
        done = (f" ({self.skipped_labelled} already labelled images left out)"
                if self.skipped_labelled else "")
        return (f"round {self.round_number}: wrote {self.images} images to {self.path}"
                f"{done}{miss}")


def readme_text(schema: LabelSchema, round_number: int, n_images: int) -> str:
    """The README shipped in the zip: label spec and the steps there and back."""
    rows = "\n".join(f"| `{a}` | select | {', '.join(f'`{v}`' for v in schema.classes[a])} |"
                     for a in schema.attributes)
    aliases = []
    for a in schema.attributes:
        for k, v in schema.aliases.get(a, {}).items():
            aliases.append(f"`{k}`->`{v}`")
    alias_line = ("Also accepted on import (aliases): " + ", ".join(aliases) + ".\n") if aliases else ""
    return f"""# Car Grouping labeling round {round_number} ({n_images} images)

Label every image in CVAT with ONE tag and we read it back.

## Label spec (create it exactly like this)

One label named `{TAG_LABEL}` of type **tag**, with these attributes:

| attribute | input | values |
|---|---|---|
{rows}

`labels.json` in this zip is the same spec for CVAT's label constructor: open the project's
**Raw** label editor, paste the file's content, Done. Value spelling matters: an unknown value
(for example `pink`) is rejected on import, CVAT itself does not check it.
{alias_line}
## Steps

1. In CVAT create a project with the label spec above (or reuse one that has it).
2. Create a task in that project; under *Select files* -> *My computer* add every file of the
   `images/` folder of this zip. Do not rename the files: their names (`<image id>_<name>`)
   are how the app finds the images again. Set *Segment size* to split the work into jobs.
3. Annotate: on each image add the `{TAG_LABEL}` tag and set color, type and orientation.
   Images you cannot judge: leave them without a tag; they are reported as unlabelled.
4. Export the task: *Actions* -> *Export task dataset* -> format **Datumaro 1.0** (images
   not needed).
5. Import the zip into the app:
   `python -m core import-datumaro task_export.zip` (or the app's CVAT page).
   The import reports what was imported, unchanged, unlabelled, skipped and rejected, and why.
"""


def export_round(ws: Any, store: Any, round_number: int, out: str | Path, *,
                 include_labelled: bool = False) -> ManualExport:
    """Write the round's zip atomically (a temporary file renamed at the end).

    Images of the round that already have a label are left out unless ``include_labelled``,
    as :func:`cvat_bridge.push.push_round` does: annotators should not redo work.
    """
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{out} should end in .zip")
    items = store.round_items(round_number)
    if not items:
        raise UserError(f"round {round_number} has no queued images")
    queued = [int(r["image_id"]) for r in items]
    labelled = set() if include_labelled else store.labelled_ids()
    wanted = [i for i in queued if i not in labelled]
    if not wanted:
        raise UserError(f"all {len(queued)} images of round {round_number} are already labelled "
                        "(use --include-labelled to export them anyway)")
    schema: LabelSchema = ws.schema
    records = store.images(wanted)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    missing: list[str] = []
    written = 0
    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(["image_id", "file", "original_name", "split"])
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for rec in records:
                src = Path(rec.path) if Path(rec.path).is_absolute() else Path(ws.root) / rec.path
                if not src.is_file():
                    missing.append(str(src))
                    continue
                name = upload_name(rec.id, rec.name)
                zf.write(src, f"images/{name}")
                writer.writerow([rec.id, name, rec.name, rec.split])
                written += 1
            if not written:
                raise UserError(f"none of round {round_number}'s image files exist")
            zf.writestr("README.md", readme_text(schema, round_number, written))
            zf.writestr("labels.json", json.dumps(label_spec(schema), indent=2))
            zf.writestr("manifest.csv", manifest.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ManualExport(path=out, round_number=round_number, images=written, missing=missing,
                        skipped_labelled=len(queued) - len(wanted))
