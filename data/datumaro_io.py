"""Import Datumaro exports (CVAT's ``Datumaro 1.0``) into the store, parsed with ``datumaro``.

Used twice: by ``cvat pull`` (the export the bridge downloaded through cvat-sdk, items mapped to
images through the recorded task items) and by ``import-datumaro PATH`` (a zip or
``default.json`` a team exported by hand; items mapped to images by file name).

What a CVAT Datumaro 1.0 export of our tags looks like (from a real CVAT 2.23): a zip with
``annotations/default.json`` (+ ``images/default/*``); each item's ``id`` is the frame's file name
without extension; a tag is a ``label`` annotation whose ``label_id`` indexes
``categories.label.labels`` and whose ``attributes`` map name -> value string. CVAT does not
validate select values, so every value goes through the schema here.

Safety: zip members are checked before anything is extracted (absolute paths, ``..``, links and
oversized members refuse the whole archive: "zip-slip"); only the annotation JSON is extracted.
A malformed or foreign export raises :class:`DatumaroImportError` and writes nothing; a good
export is written in one transaction, so an error part-way leaves the store as it was.
"""
from __future__ import annotations

import logging
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from data.errors import UserError
from data.naming import parse_upload_stem, upload_stem
from data.schema import LabelSchema, UnknownValueError

log = logging.getLogger(__name__)

TAG_LABEL = "vehicle"
IGNORED_ATTRIBUTES = frozenset({"occluded"})   # CVAT adds it to every export
MAX_JSON_BYTES = 512 * 2**20
ANNOTATION_RE = re.compile(r"^(?:.*/)?annotations/[^/]+\.json$")


class DatumaroImportError(UserError):
    """The file is not a usable Datumaro export; nothing was written."""


@dataclass
class ParsedItem:
    """One Datumaro item reduced to what we use."""

    id: str
    subset: str
    frame: int | None
    tags: list[dict[str, Any]]          # attribute dicts of the `vehicle` tags
    other: list[str]                    # descriptions of annotations we do not use


@dataclass
class ParsedExport:
    items: list[ParsedItem]
    labels: list[str]
    attributes: list[str]
    tag_label: str = TAG_LABEL              # the export's label taken as our `vehicle` tag
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import did, item by item; ``summary()`` is the one-line CLI form."""

    source: str
    imported: list[tuple[str, int]] = field(default_factory=list)     # (item, image id)
    unchanged: list[tuple[str, int]] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)     # (item, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)      # (item, reason)
    # Tags not stored because nobody reviewed them (pre-filled by the model; cvat pull).
    held: list[tuple[str, str]] = field(default_factory=list)         # (item, reason)
    notes: list[str] = field(default_factory=list)                    # said once per import

    @property
    def added(self) -> list[tuple[str, int]]:
        """Alias of ``imported`` (the name core/loop.py's round report uses)."""
        return self.imported

    @property
    def counts(self) -> dict[str, int]:
        return {"imported": len(self.imported), "unchanged": len(self.unchanged),
                "unlabelled": len(self.unlabelled), "rejected": len(self.rejected),
                "skipped": len(self.skipped), "held": len(self.held)}

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())

    def details(self, limit: int = 20) -> list[str]:
        lines = [f"  note: {n}" for n in self.notes]
        for title, rows in (("rejected", self.rejected), ("skipped", self.skipped),
                            ("held", self.held)):
            for item, reason in rows[:limit]:
                lines.append(f"  {title} {item}: {reason}")
            if len(rows) > limit:
                lines.append(f"  ... {len(rows) - limit} more {title}")
        if self.unlabelled:
            shown = ", ".join(self.unlabelled[:limit])
            more = f" (+{len(self.unlabelled) - limit} more)" if len(self.unlabelled) > limit else ""
            lines.append(f"  unlabelled (no {TAG_LABEL} tag): {shown}{more}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "counts": self.counts,
                "imported": [{"item": i, "image_id": n} for i, n in self.imported],
                "unchanged": [{"item": i, "image_id": n} for i, n in self.unchanged],
                "unlabelled": list(self.unlabelled),
                "rejected": [{"item": i, "reason": r} for i, r in self.rejected],
                "skipped": [{"item": i, "reason": r} for i, r in self.skipped],
                "held": [{"item": i, "reason": r} for i, r in self.held],
                "notes": list(self.notes)}


# -- reading ---------------------------------------------------------------------------------
def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name:
        return "NUL in name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "parent-directory ('..') path"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def _extract_annotations(zip_path: Path, dest: Path) -> list[Path]:
    """Extract only annotations/*.json from a zip after checking every member is safe."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DatumaroImportError(f"{zip_path} is not a valid zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        bad = [(i.filename, why) for i in infos if (why := _unsafe_member(i))]
        if bad:
            shown = "; ".join(f"{n!r} ({w})" for n, w in bad[:5])
            raise DatumaroImportError(
                f"refusing {zip_path}: {len(bad)} zip member(s) would be written outside the "
                f"extraction folder: {shown}")
        wanted = [i for i in infos if not i.is_dir() and ANNOTATION_RE.match(i.filename.replace("\\", "/"))]
        if not wanted:
            names = ", ".join(i.filename for i in infos[:8]) or "nothing"
            raise DatumaroImportError(
                f"{zip_path} holds no annotations/*.json, so it is not a Datumaro export "
                f"(it holds: {names})")
        prefixes = {i.filename.replace("\\", "/").rsplit("annotations/", 1)[0] for i in wanted}
        if len(prefixes) > 1:
            raise DatumaroImportError(f"{zip_path} holds several Datumaro datasets: {sorted(prefixes)}")
        out = []
        for info in wanted:
            if info.file_size > MAX_JSON_BYTES:
                raise DatumaroImportError(f"{info.filename} is larger than {MAX_JSON_BYTES >> 20} MiB")
            target = dest / "annotations" / PurePosixPath(info.filename.replace("\\", "/")).name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(target)
        return out


def choose_tag_label(labels: list[str], attributes: list[str],
                     schema: LabelSchema | None) -> tuple[str | None, str | None]:
    """Which of the export's labels is our ``vehicle`` tag, and a note when not by exact name.

    Names match case-insensitively (a CVAT project may call it ``Vehicle``). A project with a
    single label under another name is accepted when the export declares all of our
    attributes, since its tags can then only mean ours; the note says so.
    """
    if TAG_LABEL in labels:
        return TAG_LABEL, None
    folded = [n for n in labels if n.strip().lower() == TAG_LABEL]
    if len(folded) == 1:
        return folded[0], f"label {folded[0]!r} taken as {TAG_LABEL!r} (names compared ignoring case)"
    if schema is not None and len(labels) == 1:
        declared = set(attributes) - IGNORED_ATTRIBUTES
        if set(schema.attributes) <= declared:
            return labels[0], (f"the export's only label {labels[0]!r} taken as {TAG_LABEL!r}: "
                               f"its attributes match ({', '.join(schema.attributes)})")
    return None, None


def read_datumaro(path: str | Path, schema: LabelSchema | None = None) -> ParsedExport:
    """Parse a Datumaro export (.zip, a default.json, or an export folder) with datumaro."""
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType

    path = Path(path)
    if not path.exists():
        raise DatumaroImportError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="cargroup-dm-") as tmp:
        root = Path(tmp)
        if path.is_dir():
            src_dir = path if (path / "annotations").is_dir() else None
            if src_dir is None:
                raise DatumaroImportError(f"{path} has no annotations/ folder")
            for f in (src_dir / "annotations").glob("*.json"):
                (root / "annotations").mkdir(exist_ok=True)
                shutil.copy2(f, root / "annotations" / f.name)
        elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
            _extract_annotations(path, root)
        elif path.suffix.lower() == ".json":
            (root / "annotations").mkdir()
            shutil.copy2(path, root / "annotations" / path.name)
        else:
            raise DatumaroImportError(f"{path} is neither a Datumaro .zip nor a .json annotation file")
        try:
            dataset = dm.Dataset.import_from(str(root), "datumaro")
            items = list(dataset)
            categories = dataset.categories()
        except Exception as exc:  # noqa: BLE001 - datumaro raises many types; all mean "unusable"
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            raise DatumaroImportError(
                f"{path.name} is not a readable Datumaro export ({detail[:300]})") from None

    label_cat = categories.get(AnnotationType.label)
    labels = [c.name for c in label_cat.items] if label_cat is not None else []
    attributes = sorted(label_cat.attributes) if label_cat is not None else []
    tag_label, note = choose_tag_label(labels, attributes, schema)
    parsed = []
    for it in items:
        tags, other = [], []
        for ann in it.annotations:
            if ann.type == AnnotationType.label:
                if ann.label is None or not 0 <= ann.label < len(labels):
                    other.append(f"label annotation with label_id {ann.label} outside the "
                                 f"{len(labels)} categories")
                    continue
                name = labels[ann.label]
                if name == tag_label:
                    tags.append(dict(ann.attributes))
                else:
                    other.append(f"tag {name!r}")
            else:
                other.append(f"{ann.type.name} annotation")
        frame = it.attributes.get("frame")
        parsed.append(ParsedItem(id=str(it.id), subset=str(it.subset or "default"),
                                 frame=int(frame) if isinstance(frame, (int, float)) else None,
                                 tags=tags, other=other))
    return ParsedExport(items=parsed, labels=labels, attributes=attributes,
                        tag_label=tag_label or TAG_LABEL, notes=[note] if note else [])


def check_schema(export: ParsedExport, schema: LabelSchema, origin: str) -> None:
    """Refuse exports made with another label spec (no `vehicle` label, none of our attributes)."""
    if not export.items:
        raise DatumaroImportError(f"{origin} holds no items")
    if export.tag_label not in export.labels:
        raise DatumaroImportError(
            f"{origin} was not made with our label spec: its labels are {export.labels or 'none'}, "
            f"expected a tag label {TAG_LABEL!r} with attributes {', '.join(schema.attributes)}")
    known = set(schema.attributes)
    declared = set(export.attributes) - IGNORED_ATTRIBUTES
    if declared and not declared & known:
        raise DatumaroImportError(
            f"{origin} has attributes {sorted(declared)}, none of ours "
            f"({', '.join(schema.attributes)}); was it exported from another project?")


def item_values(item: ParsedItem, schema: LabelSchema) -> dict[str, str]:
    """The item's label values through the schema's aliases; raises ValueError with the reason."""
    if len(item.tags) > 1:
        distinct = {tuple(sorted((k, str(v)) for k, v in t.items())) for t in item.tags}
        if len(distinct) > 1:
            raise ValueError(f"{len(item.tags)} {TAG_LABEL} tags that disagree")
    tag = item.tags[0]
    unknown = sorted(set(tag) - set(schema.attributes) - IGNORED_ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attribute(s) {', '.join(map(repr, unknown))}")
    raw = {a: v for a, v in tag.items() if a in schema.classes}
    try:
        return schema.normalise_label(raw, item=item.id)
    except UnknownValueError as exc:
        raise ValueError(str(exc)) from None


# -- mapping items to images ----------------------------------------------------------------
def name_index(store: Any) -> Callable[[str], tuple[int | None, str]]:
    """Map a Datumaro item id to an image id by file name (the manual route).

    Item ids are file names without extension. Our own exports name files
    ``<image id>_<name>``; otherwise the stem must match exactly one pool image.
    """
    by_stem: dict[str, list[int]] = {}
    names: dict[int, str] = {}
    for rec in store.images():
        by_stem.setdefault(PurePosixPath(rec.name).stem, []).append(rec.id)
        names[rec.id] = rec.name

    def lookup(item_id: str) -> tuple[int | None, str]:
        stem = PurePosixPath(item_id).name
        candidates = set(by_stem.get(stem, []))
        parsed = parse_upload_stem(stem)
        if parsed is not None and parsed[0] in names \
                and upload_stem(parsed[0], names[parsed[0]]) == stem:
            candidates.add(parsed[0])
        if len(candidates) == 1:
            return candidates.pop(), ""
        if not candidates:
            return None, "no pool image with this file name"
        return None, f"ambiguous: {len(candidates)} pool images match {stem!r}"
    return lookup


def import_datumaro(ws: Any, path: str | Path, *, source: str = "import", store: Any = None,
                    item_map: Mapping[str, int] | None = None,
                    source_ref: str | Callable[[ParsedItem], str] | None = None,
                    annotator: str | Callable[[ParsedItem], str | None] | None = None,
                    round_id: int | None = None,
                    review: Callable[[ParsedItem, dict[str, str]],
                                     tuple[dict[str, str] | None, str]] | None = None,
                    ) -> ImportReport:
    """Import a Datumaro export into the workspace's store; returns what happened per item.

    ``item_map`` (item id -> image id) is how ``cvat pull`` maps items of a task it pushed;
    without it items are matched by file name. Unknown values and unknown items are reported,
    not guessed; all labels are written in one transaction. ``review(item, values)`` (cvat
    pull) may return ``(None, reason)`` to hold an item back or ``(values, "")`` with values
    removed (e.g. CVAT's fill-ins for attributes a pre-label left out).
    """
    path = Path(path)
    schema: LabelSchema = ws.schema
    export = read_datumaro(path, schema)
    check_schema(export, schema, path.name)
    own_store = store is None
    store = ws.store() if own_store else store
    try:
        report = ImportReport(source=str(path), notes=list(export.notes))
        lookup = None if item_map is not None else name_index(store)
        plan: list[tuple[ParsedItem, int, dict[str, str]]] = []
        seen: dict[int, str] = {}
        for item in export.items:
            if item_map is not None:
                image_id = item_map.get(item.id)
                why = "not an item of the pushed task"
            else:
                assert lookup is not None
                image_id, why = lookup(item.id)
            if image_id is None:
                report.skipped.append((item.id, why))
                continue
            if image_id in seen:
                report.skipped.append((item.id, f"image {image_id} already given by item {seen[image_id]!r}"))
                continue
            seen[image_id] = item.id
            if not item.tags:
                report.unlabelled.append(item.id)
                continue
            try:
                values = item_values(item, schema)
            except ValueError as exc:
                report.rejected.append((item.id, str(exc)))
                continue
            if review is not None:
                kept, why = review(item, values)
                if kept is None:
                    report.held.append((item.id, why))
                    continue
                values = kept
            if not values:
                report.unlabelled.append(item.id)
                continue
            plan.append((item, image_id, values))

        default_ref = f"file:{path.name}" if source == "import" else None
        with store.transaction():
            for item, image_id, values in plan:
                ref = source_ref(item) if callable(source_ref) else (source_ref or default_ref)
                who = annotator(item) if callable(annotator) else annotator
                version = store.add_label(image_id, values, source=source, source_ref=ref,
                                          annotator=who, round_id=round_id)
                (report.imported if version is not None else report.unchanged).append(
                    (item.id, image_id))
        return report
    finally:
        if own_store:
            store.close()
