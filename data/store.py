"""The project store: one SQLite database per workspace.

Why SQLite: the app is one team's tool on one machine; a file database with WAL gives
concurrent readers (the dashboard) next to one writer (a background job) with no server to run.

Tables (see ``MIGRATIONS``):
- ``images``: every accepted pool image (path, content hash, size, fixed split, cache row).
- ``rejects``: files that could not be used, with the reason.
- ``labels`` + ``label_values``: a label *version* per image with provenance; values are
  per attribute and may be partial. A re-label adds a version; the current label is the
  highest version. ``ground_truth`` holds hidden labels for the simulated annotator.
- ``rounds`` + ``round_items``: labeling rounds (round 0 is the random seed batch) and
  the ranked images queued in each.
- ``models``: trained checkpoints and their metrics; one is current.
- ``predictions`` + ``scores``: per-model, per-image predicted class/probability and
  uncertainty scores.
- ``jobs``: background-job state (training, scoring, ...).
- ``image_counts``: images per split, kept by triggers, so status costs the same at any pool size;
  ``labels.is_current`` (also kept by a trigger) marks each image's current version, so
  "current labels" is an index scan instead of a MAX() per label; ``labels.split`` (kept by
  triggers) copies the image's split so label counts per split never read the pool's rows.
- ``cvat_tasks`` + ``cvat_task_items``: which images went to which CVAT task.
- ``eval_set``: the evaluation set, test-split images in draw (= labelling) order. A member is
  never removed once labelled, so every model is measured on the same images.
- ``label_suggestions``: per saved Label-page version and attribute, the model's suggestion,
  whether it was pre-selected or a hint, and the outcome (accepted / changed / unsure).
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

SPLITS = ("train", "val", "test")
MMAP_BYTES = 1 << 30  # address space only; a 1M-image store is about 0.9 GB
LABEL_SOURCES = ("cvat", "builtin", "import", "simulated")

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'ok',
        split TEXT NOT NULL CHECK (split IN ('train','val','test')),
        group_key TEXT,
        source TEXT,
        cache_row INTEGER,
        added_at REAL NOT NULL
    );
    CREATE INDEX images_split ON images(split);
    CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        source TEXT,
        reason TEXT NOT NULL,
        added_at REAL NOT NULL,
        UNIQUE (path, source)
    );
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('cvat','builtin','import','simulated')),
        source_ref TEXT,
        annotator TEXT,
        round_id INTEGER REFERENCES rounds(id),
        created_at REAL NOT NULL,
        UNIQUE (image_id, version)
    );
    CREATE TABLE label_values (
        label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (label_id, attribute)
    );
    CREATE TABLE ground_truth (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (image_id, attribute)
    );
    CREATE TABLE rounds (
        id INTEGER PRIMARY KEY,
        number INTEGER NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        strategy TEXT,
        params TEXT NOT NULL DEFAULT '{}',
        record TEXT NOT NULL DEFAULT '{}',
        model_id INTEGER REFERENCES models(id),
        created_at REAL NOT NULL
    );
    CREATE TABLE round_items (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL,
        score REAL,
        PRIMARY KEY (round_id, image_id)
    );
    CREATE INDEX round_items_image ON round_items(image_id);
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        round_id INTEGER REFERENCES rounds(id),
        parent_id INTEGER REFERENCES models(id),
        status TEXT NOT NULL CHECK (status IN ('ready','failed','retired')),
        is_current INTEGER NOT NULL DEFAULT 0,
        params TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE TABLE predictions (
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        value TEXT NOT NULL,
        prob REAL NOT NULL,
        PRIMARY KEY (model_id, image_id, attribute)
    );
    CREATE TABLE scores (
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (model_id, image_id, name)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
        progress REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT '{}',
        log TEXT NOT NULL DEFAULT '[]',
        pid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE cvat_tasks (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        round_id INTEGER REFERENCES rounds(id),
        name TEXT NOT NULL,
        prefilled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        UNIQUE (host, task_id)
    );
    CREATE TABLE cvat_task_items (
        cvat_task INTEGER NOT NULL REFERENCES cvat_tasks(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        frame INTEGER NOT NULL,
        item_name TEXT NOT NULL,
        PRIMARY KEY (cvat_task, image_id),
        UNIQUE (cvat_task, item_name)
    );
    """,
    # 2: indexes for the interactive queries (Label page, status, queue recording) and the
    # worker's process start time, so a reused PID is not taken for a live worker.
    """
    CREATE INDEX round_items_rank ON round_items(round_id, rank);
    CREATE INDEX images_name ON images(name);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX models_current ON models(is_current);
    ALTER TABLE jobs ADD COLUMN pid_started TEXT;
    ALTER TABLE labels ADD COLUMN is_current INTEGER NOT NULL DEFAULT 0;
    UPDATE labels SET is_current = 1
        WHERE version = (SELECT MAX(version) FROM labels x WHERE x.image_id = labels.image_id);
    CREATE INDEX labels_current ON labels(image_id, source, id) WHERE is_current = 1;
    CREATE TRIGGER labels_current_insert AFTER INSERT ON labels BEGIN
        UPDATE labels SET is_current = (version = (SELECT MAX(version) FROM labels x
                                                   WHERE x.image_id = NEW.image_id))
            WHERE image_id = NEW.image_id;
    END;
    CREATE TABLE image_counts (split TEXT PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO image_counts(split, n) SELECT split, COUNT(*) FROM images GROUP BY split;
    CREATE TRIGGER image_counts_insert AFTER INSERT ON images BEGIN
        INSERT INTO image_counts(split, n) VALUES (NEW.split, 1)
            ON CONFLICT(split) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER image_counts_delete AFTER DELETE ON images BEGIN
        UPDATE image_counts SET n = n - 1 WHERE split = OLD.split;
    END;
    CREATE TRIGGER image_counts_move AFTER UPDATE OF split ON images BEGIN
        UPDATE image_counts SET n = n - 1 WHERE split = OLD.split;
        INSERT INTO image_counts(split, n) VALUES (NEW.split, 1)
            ON CONFLICT(split) DO UPDATE SET n = n + 1;
    END;
    """,
    # 3: the evaluation set (explicit membership; see data/evalset.py)
    """
    CREATE TABLE IF NOT EXISTS eval_set (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        position INTEGER NOT NULL UNIQUE,
        added_at REAL NOT NULL
    );
    """,
    # 4: each model records its backbone and where the backbone's starting weights came from
    # (JSON {backbone, kind, detail}; '{}' = not recorded). Models before this were ResNet18.
    """
    ALTER TABLE models ADD COLUMN backbone TEXT NOT NULL DEFAULT 'resnet18';
    ALTER TABLE models ADD COLUMN weights_origin TEXT NOT NULL DEFAULT '{}';
    """,
    # 5 (task arch): each label row carries its image's split, kept by triggers, so status, the
    # queue's label counts and its covered set read the labels alone and never touch the pool's
    # rows: their cost follows the number of labels, not of images (flat from 10k to 1M).
    """
    ALTER TABLE labels ADD COLUMN split TEXT;
    UPDATE labels SET split = (SELECT i.split FROM images i WHERE i.id = labels.image_id);
    CREATE TRIGGER labels_split_insert AFTER INSERT ON labels BEGIN
        UPDATE labels SET split = (SELECT i.split FROM images i WHERE i.id = NEW.image_id)
            WHERE id = NEW.id;
    END;
    CREATE TRIGGER labels_split_move AFTER UPDATE OF split ON images BEGIN
        UPDATE labels SET split = NEW.split WHERE image_id = NEW.id;
    END;
    CREATE INDEX labels_current_split ON labels(split, source) WHERE is_current = 1;
    """,
    # 6 (task label, issue 13): what the model suggested per attribute when a label was saved
    # on the Label page, whether it was pre-selected (above the pre-fill threshold) or only a
    # hint, and what the annotator did with it, so acceptance/override rates are measurable.
    """
    CREATE TABLE IF NOT EXISTS label_suggestions (
        label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        suggested TEXT NOT NULL,
        probability REAL NOT NULL,
        preselected INTEGER NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('accepted','changed','unsure')),
        PRIMARY KEY (label_id, attribute)
    );
    CREATE INDEX IF NOT EXISTS label_suggestions_outcome
        ON label_suggestions(attribute, suggested, outcome);
    """,
    # 7 (task review): several annotators. ``claims``: an image handed out to one annotator until
    # its claim expires (pass 1: the label, pass 2: the independent second label). ``round_assignees``:
    # rounds handed to named annotators (a round with none is open to everyone). ``double_items``:
    # per round, which images were considered for double labelling and which were chosen.
    # ``labels.kind``: 'label' (an ordinary version), 'second' (an independent second label, never
    # the current one) or 'review' (a reviewer's decision on a disagreement).
    """
    CREATE TABLE claims (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        pass INTEGER NOT NULL CHECK (pass IN (1, 2)),
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        claimed_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (image_id, pass)
    );
    CREATE INDEX claims_annotator ON claims(annotator, round_id);
    CREATE INDEX claims_expiry ON claims(expires_at);
    CREATE TABLE round_assignees (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        assigned_by TEXT NOT NULL,
        assigned_at REAL NOT NULL,
        PRIMARY KEY (round_id, annotator)
    );
    CREATE TABLE double_items (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        chosen INTEGER NOT NULL,
        PRIMARY KEY (round_id, image_id)
    );
    CREATE INDEX double_items_image ON double_items(image_id) WHERE chosen = 1;
    ALTER TABLE labels ADD COLUMN kind TEXT NOT NULL DEFAULT 'label'
        CHECK (kind IN ('label', 'second', 'review'));
    CREATE INDEX labels_annotator ON labels(annotator, created_at);
    DROP TRIGGER labels_current_insert;
    CREATE TRIGGER labels_current_insert AFTER INSERT ON labels BEGIN
        UPDATE labels SET is_current = (kind != 'second' AND version = (
                SELECT MAX(version) FROM labels x WHERE x.image_id = NEW.image_id
                AND x.kind != 'second'))
            WHERE image_id = NEW.image_id;
    END;
    """,
]

# Ids travel to SQLite as one JSON array (``json_each``), never as one bound parameter per id:
# SQLite caps the number of parameters (32766 by default), and the pool can hold 500k images.
_IDS = "(SELECT value FROM json_each(?))"


def _ids_json(ids: Iterable[int]) -> str:
    return json.dumps([int(i) for i in ids])


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script (a trigger body's ``;`` does not end its CREATE)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \n;"):
        yield buffer


class StoreError(RuntimeError):
    """A request the store refuses (unknown image, a test image into training, ...)."""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    name: str
    sha256: str
    width: int
    height: int
    bytes: int
    split: str
    group_key: str | None
    source: str | None
    cache_row: int | None


@dataclass(frozen=True)
class LabelVersion:
    id: int
    image_id: int
    version: int
    values: dict[str, str]
    source: str
    source_ref: str | None
    annotator: str | None
    round_id: int | None
    created_at: float
    kind: str = "label"   # 'label', 'second' (independent second label) or 'review'


LABEL_KINDS = ("label", "second", "review")


def _now() -> float:
    return time.time()


class ProjectStore:
    """Typed access to the project database. One instance per thread/process."""

    def _set_wal(self, timeout: float) -> None:
        """Switch to WAL, retrying: the switch needs an exclusive lock, and SQLite may answer
        "database is locked" at once (no busy wait) while another process opens a fresh file."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                    check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._set_wal(timeout)
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Pages are read through a memory map: every page load opens a fresh connection with a
        # cold page cache, and mapped reads of the OS cache cost no system call per page.
        self.conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._migrate()

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ProjectStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, current: int) -> None:
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} was written by a newer version (schema {current}); update the app")

    def _migrate(self) -> None:
        """Bring the schema up to date.

        The version is read again *inside* the write transaction: two processes opening a new
        workspace at once would otherwise both see version 0 and the second would re-run the
        first migration on top of the first one's tables. The first read only skips the write
        lock when there is nothing to do (versions never go down).
        """
        current = self.schema_version
        self._check_version(current)
        if current == len(MIGRATIONS):
            return
        with self.transaction():
            current = self.schema_version
            self._check_version(current)
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in _statements(script):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing block; nested calls join the outer transaction."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- images ---------------------------------------------------------------------------
    def add_image(self, *, path: str, name: str, sha256: str, width: int, height: int,
                  nbytes: int, split: str, group_key: str | None = None,
                  source: str | None = None, cache_row: int | None = None) -> tuple[int, bool]:
        """Insert an image; returns (id, created). A known content hash is not added twice."""
        if split not in SPLITS:
            raise StoreError(f"unknown split {split!r}")
        with self.transaction():  # look-up and insert see the same database
            row = self.conn.execute("SELECT id FROM images WHERE sha256=?", (sha256,)).fetchone()
            if row:
                return int(row[0]), False
            cur = self.conn.execute(
                "INSERT INTO images(path, name, sha256, width, height, bytes, split, group_key, "
                "source, cache_row, added_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (path, name, sha256, width, height, nbytes, split, group_key, source, cache_row,
                 _now()))
        return int(cur.lastrowid), True

    def known_hashes(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.conn.execute("SELECT sha256, id FROM images")}

    def set_cache_row(self, image_id: int, row: int) -> None:
        self.conn.execute("UPDATE images SET cache_row=? WHERE id=?", (row, image_id))

    def set_split(self, image_id: int, split: str) -> None:
        """Move an image between train and val. The test split is fixed both ways."""
        if split not in SPLITS:
            raise StoreError(f"unknown split {split!r}")
        with self.transaction():  # the check and the move see the same split
            current = self.image(image_id).split
            if current != split and "test" in (current, split):
                raise StoreError(f"image {image_id}: the test split is fixed ({current} -> {split})")
            self.conn.execute("UPDATE images SET split=? WHERE id=?", (split, image_id))

    def image(self, image_id: int) -> ImageRecord:
        row = self.conn.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise StoreError(f"no image with id {image_id}")
        return self._image(row)

    def images(self, ids: Iterable[int] | None = None, *, split: str | None = None) -> list[ImageRecord]:
        sql, args = "SELECT * FROM images", []
        clauses = []
        if split is not None:
            clauses.append("split=?")
            args.append(split)
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return []
            clauses.append(f"id IN {_IDS}")
            args.append(_ids_json(id_list))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [self._image(r) for r in rows]

    def split_ids(self, split: str) -> list[int]:
        """Ids of one split, by id: read from the ``images_split`` index alone (no pool rows)."""
        return [int(r[0]) for r in self.conn.execute(
            "SELECT id FROM images INDEXED BY images_split WHERE split=? ORDER BY id", (split,))]

    def image_by_name(self, name: str) -> list[ImageRecord]:
        rows = self.conn.execute("SELECT * FROM images WHERE name=? ORDER BY id", (name,))
        return [self._image(r) for r in rows]

    @staticmethod
    def _image(row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(id=row["id"], path=row["path"], name=row["name"], sha256=row["sha256"],
                           width=row["width"], height=row["height"], bytes=row["bytes"],
                           split=row["split"], group_key=row["group_key"], source=row["source"],
                           cache_row=row["cache_row"])

    def count_images(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(SUM(n), 0) FROM image_counts").fetchone()[0])

    # -- rejects --------------------------------------------------------------------------
    def add_reject(self, path: str, reason: str, source: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO rejects(path, source, reason, added_at) VALUES (?,?,?,?) "
            "ON CONFLICT(path, source) DO UPDATE SET reason=excluded.reason",
            (path, source, reason, _now()))

    def rejects(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(
            "SELECT path, source, reason, added_at FROM rejects ORDER BY id")]

    # -- labels ---------------------------------------------------------------------------
    def add_label(self, image_id: int, values: Mapping[str, str], *, source: str,
                  source_ref: str | None = None, annotator: str | None = None,
                  round_id: int | None = None, skip_if_same: bool = True,
                  kind: str = "label") -> int | None:
        """Record a label version. Returns the new version, or None when nothing changed.

        ``values`` must already be normalised through the schema; attributes not present are
        "not labelled" (partial labels are normal). When ``skip_if_same`` and the current
        label has exactly these values, no version is added (re-pulls are idempotent).
        ``kind="second"`` stores an independent second label: a version in the history that
        never becomes the current label (see core/double.py).
        """
        if source not in LABEL_SOURCES:
            raise StoreError(f"unknown label source {source!r}")
        if kind not in LABEL_KINDS:
            raise StoreError(f"unknown label kind {kind!r}")
        self.image(image_id)
        with self.transaction():
            current = self.current_label(image_id)
            if skip_if_same and current is not None and current.values == dict(values):
                return None
            # MAX over all versions: a second label is a version but never the current one
            version = int(self.conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM labels WHERE image_id=?",
                (image_id,)).fetchone()[0])
            cur = self.conn.execute(
                "INSERT INTO labels(image_id, version, source, source_ref, annotator, round_id, "
                "created_at, kind) VALUES (?,?,?,?,?,?,?,?)",
                (image_id, version, source, source_ref, annotator, round_id, _now(), kind))
            label_id = cur.lastrowid
            self.conn.executemany(
                "INSERT INTO label_values(label_id, attribute, value) VALUES (?,?,?)",
                [(label_id, a, v) for a, v in values.items()])
        return version

    def add_label_suggestions(self, image_id: int, version: int,
                              rows: Iterable[tuple[str, str, float, bool, str]]) -> None:
        """Record what the model suggested for one saved label version.

        rows: (attribute, suggested class, probability, pre-selected?, outcome) with outcome
        'accepted' (kept the suggestion), 'changed' (chose another class) or 'unsure'.
        """
        with self.transaction():
            row = self.conn.execute("SELECT id FROM labels WHERE image_id=? AND version=?",
                                    (image_id, version)).fetchone()
            if row is None:
                raise StoreError(f"no label version {version} for image {image_id}")
            self.conn.executemany(
                "INSERT OR REPLACE INTO label_suggestions(label_id, attribute, suggested, "
                "probability, preselected, outcome) VALUES (?,?,?,?,?,?)",
                [(int(row[0]), a, v, float(p), int(bool(pre)), o) for a, v, p, pre, o in rows])

    def suggestion_outcomes(self) -> list[dict[str, Any]]:
        """Counts of suggestion outcomes per (annotator, attribute, suggested, preselected, outcome).

        Every saved version counts (an annotator who overrode and later re-labelled the same
        image made two decisions). The cost follows the number of recorded suggestions.
        """
        rows = self.conn.execute(
            "SELECT l.annotator, s.attribute, s.suggested, s.preselected, s.outcome, COUNT(*) AS n "
            "FROM label_suggestions s JOIN labels l ON l.id = s.label_id "
            "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5")
        return [dict(r) for r in rows]

    def label_examples(self, attribute: str, per_class: int) -> dict[str, list[int]]:
        """{class: up to ``per_class`` image ids} whose current label has that class, newest first
        (reference thumbnails for the labelling guide)."""
        rows = self.conn.execute(
            "SELECT value, image_id FROM (SELECT v.value, l.image_id, ROW_NUMBER() OVER "
            "(PARTITION BY v.value ORDER BY l.id DESC) AS k FROM labels l JOIN label_values v "
            "ON v.label_id = l.id WHERE l.is_current = 1 AND v.attribute = ?) WHERE k <= ? "
            "ORDER BY value, k", (attribute, int(per_class)))
        out: dict[str, list[int]] = {}
        for value, image_id in rows:
            out.setdefault(str(value), []).append(int(image_id))
        return out

    def _label_versions(self, where: str, args: Sequence[Any]) -> list[LabelVersion]:
        rows = self.conn.execute(
            f"SELECT l.*, v.attribute, v.value FROM labels l "
            f"LEFT JOIN label_values v ON v.label_id = l.id WHERE {where} "
            f"ORDER BY l.image_id, l.version", args).fetchall()
        out: dict[int, LabelVersion] = {}
        for r in rows:
            lv = out.get(r["id"])
            if lv is None:
                lv = LabelVersion(id=r["id"], image_id=r["image_id"], version=r["version"],
                                  values={}, source=r["source"], source_ref=r["source_ref"],
                                  annotator=r["annotator"], round_id=r["round_id"],
                                  created_at=r["created_at"], kind=r["kind"])
                out[r["id"]] = lv
            if r["attribute"] is not None:
                lv.values[r["attribute"]] = r["value"]
        return list(out.values())

    def current_label(self, image_id: int) -> LabelVersion | None:
        versions = self._label_versions(
            "l.image_id=? AND l.is_current=1", (image_id,))
        return versions[0] if versions else None

    def label_history(self, image_id: int) -> list[LabelVersion]:
        return self._label_versions("l.image_id=?", (image_id,))

    def current_labels(self, *, split: str | None = None,
                       include_empty: bool = False) -> dict[int, dict[str, str]]:
        """{image_id: {attribute: value}} for every labelled image (current versions)."""
        where = "l.is_current=1"
        args: list[Any] = []
        if split is not None:
            where += " AND l.image_id IN (SELECT id FROM images WHERE split=?)"
            args.append(split)
        result = {lv.image_id: lv.values for lv in self._label_versions(where, args)}
        if not include_empty:
            result = {k: v for k, v in result.items() if v}
        return result

    def labelled_ids(self) -> set[int]:
        """Images with a current label holding at least one attribute."""
        return {int(r[0]) for r in self.conn.execute(
            "SELECT l.image_id FROM labels l WHERE l.is_current=1 AND "
            "EXISTS (SELECT 1 FROM label_values v WHERE v.label_id=l.id)")}

    # Labels carry their image's split (migration 5), so these read the labels alone.
    _HAS_VALUES = "EXISTS (SELECT 1 FROM label_values v WHERE v.label_id=l.id)"

    @staticmethod
    def _not_in(column: str, splits: Sequence[str]) -> str:
        return f" AND {column} NOT IN ({','.join('?' * len(splits))})" if splits else ""

    def labelled_count(self, *, exclude_splits: Iterable[str] = ()) -> int:
        """How many images hold a current label with values, outside ``exclude_splits``.

        Cost follows the number of labels, not of images (no pool row is read).
        """
        skip = tuple(exclude_splits)
        return int(self.conn.execute(
            f"SELECT COUNT(*) FROM labels l WHERE l.is_current=1 AND {self._HAS_VALUES}"
            + self._not_in("l.split", skip), skip).fetchone()[0])

    def label_value_counts(self, *, exclude_splits: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """{attribute: {class: n}} over current labels outside ``exclude_splits`` (one aggregate)."""
        skip = tuple(exclude_splits)
        out: dict[str, dict[str, int]] = {}
        for attr, value, n in self.conn.execute(
                "SELECT v.attribute, v.value, COUNT(*) FROM labels l CROSS JOIN label_values v "
                "ON v.label_id=l.id WHERE l.is_current=1" + self._not_in("l.split", skip)
                + " GROUP BY 1, 2", skip):
            out.setdefault(attr, {})[value] = int(n)
        return out

    def covered_ids(self, *, exclude_splits: Iterable[str] = ()) -> list[int]:
        """Images labelled (current label with values) or queued in a round, outside
        ``exclude_splits``, by id. Cost follows labels + queued images, not the pool."""
        skip = tuple(exclude_splits)
        rows = self.conn.execute(
            f"SELECT l.image_id FROM labels l WHERE l.is_current=1 AND {self._HAS_VALUES}"
            + self._not_in("l.split", skip)
            + " UNION SELECT q.image_id FROM (SELECT DISTINCT image_id FROM round_items) q "
            "CROSS JOIN images i ON i.id=q.image_id WHERE 1" + self._not_in("i.split", skip)
            + " ORDER BY 1", skip + skip)
        return [int(r[0]) for r in rows]

    # -- ground truth (hidden; for the simulated annotator) --------------------------------
    def set_ground_truth(self, image_id: int, values: Mapping[str, str]) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM ground_truth WHERE image_id=?", (image_id,))
            self.conn.executemany(
                "INSERT INTO ground_truth(image_id, attribute, value) VALUES (?,?,?)",
                [(image_id, a, v) for a, v in values.items()])

    def ground_truth(self, ids: Iterable[int] | None = None) -> dict[int, dict[str, str]]:
        """{image_id: {attribute: value}}; with ``ids``, an indexed look-up of those only."""
        if ids is None:
            rows = self.conn.execute("SELECT image_id, attribute, value FROM ground_truth")
        else:
            rows = self.conn.execute(
                f"SELECT image_id, attribute, value FROM ground_truth WHERE image_id IN {_IDS}",
                (_ids_json(ids),))
        out: dict[int, dict[str, str]] = {}
        for image_id, attr, value in rows:
            out.setdefault(int(image_id), {})[attr] = value
        return out

    # -- rounds and queues ----------------------------------------------------------------
    def create_round(self, image_ids: Sequence[int], *, kind: str, strategy: str | None = None,
                     scores: Sequence[float] | None = None,
                     params: Mapping[str, Any] | None = None,
                     model_id: int | None = None) -> int:
        """Record a labeling round with its ranked images; returns the round number."""
        if scores is not None and len(scores) != len(image_ids):
            raise StoreError("scores and image_ids differ in length")
        with self.transaction():
            number = self.conn.execute("SELECT COALESCE(MAX(number), -1) + 1 FROM rounds").fetchone()[0]
            cur = self.conn.execute(
                "INSERT INTO rounds(number, kind, strategy, params, model_id, created_at) "
                "VALUES (?,?,?,?,?,?)",
                (number, kind, strategy, json.dumps(dict(params or {})), model_id, _now()))
            round_id = cur.lastrowid
            self.conn.executemany(
                "INSERT INTO round_items(round_id, image_id, rank, score) VALUES (?,?,?,?)",
                [(round_id, int(i), rank, None if scores is None else float(scores[rank]))
                 for rank, i in enumerate(image_ids)])
        return int(number)

    _ROUND_SQL = ("SELECT r.*, (SELECT COUNT(*) FROM round_items i WHERE i.round_id=r.id) AS size "
                  "FROM rounds r")

    @staticmethod
    def _round(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["params"] = json.loads(d["params"])
        d["record"] = json.loads(d["record"])
        return d

    def rounds(self) -> list[dict[str, Any]]:
        return [self._round(r) for r in self.conn.execute(self._ROUND_SQL + " ORDER BY number")]

    def round(self, number: int) -> dict[str, Any]:
        row = self.conn.execute(self._ROUND_SQL + " WHERE number=?", (number,)).fetchone()
        if row is None:
            raise StoreError(f"no round {number}")
        return self._round(row)

    def latest_round(self) -> dict[str, Any] | None:
        row = self.conn.execute(self._ROUND_SQL + " ORDER BY number DESC LIMIT 1").fetchone()
        return None if row is None else self._round(row)

    def round_progress(self, number: int | None = None) -> list[dict[str, Any]]:
        """Per round: id, number, kind, strategy, ``total`` images and ``done`` (any label saved).

        One indexed query whose cost follows the rounds' sizes, not the pool's (the Label page
        runs it on every load).
        """
        where, args = ("WHERE r.number=?", (number,)) if number is not None else ("", ())
        rows = self.conn.execute(
            "SELECT r.id, r.number, r.kind, r.strategy, "
            "(SELECT COUNT(*) FROM round_items i WHERE i.round_id=r.id) AS total, "
            "(SELECT COUNT(*) FROM round_items i WHERE i.round_id=r.id AND EXISTS "
            " (SELECT 1 FROM labels l WHERE l.image_id=i.image_id)) AS done "
            f"FROM rounds r {where} ORDER BY r.number", args)
        return [dict(r) for r in rows]

    def round_unvisited(self, number: int) -> Iterator[int]:
        """A round's images without any saved label version, in rank order (lazily)."""
        cur = self.conn.execute(
            "SELECT i.image_id FROM rounds r JOIN round_items i ON i.round_id=r.id "
            "WHERE r.number=? AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id=i.image_id) "
            "ORDER BY i.rank", (number,))
        for row in cur:
            yield int(row[0])

    def round_rank(self, number: int, image_id: int) -> int | None:
        row = self.conn.execute(
            "SELECT i.rank FROM round_items i JOIN rounds r ON r.id=i.round_id "
            "WHERE r.number=? AND i.image_id=?", (number, image_id)).fetchone()
        return None if row is None else int(row[0])

    def round_items(self, number: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT i.image_id, i.rank, i.score FROM round_items i JOIN rounds r "
            "ON r.id=i.round_id WHERE r.number=? ORDER BY i.rank", (number,))
        return [dict(r) for r in rows]

    def update_round_record(self, number: int, record: Mapping[str, Any]) -> None:
        """Merge ``record`` into the round's record (label counts, metrics, timings).

        Read and write in one IMMEDIATE transaction, so two processes merging at once both keep
        their keys.
        """
        with self.transaction():
            current = self.round(number)["record"]
            current.update(record)
            self.conn.execute("UPDATE rounds SET record=? WHERE number=?",
                              (json.dumps(current), number))

    def reorder_round(self, number: int, order: Mapping[int, tuple[int, float | None]]) -> None:
        """Give some of a round's images new ranks and scores: ``{image_id: (rank, score)}``.

        Used by the head refit to re-rank a batch's unlabelled remainder in place (same images,
        new order), so the Label page serves the fresh ranking without a new round.
        """
        rnd = self.round(number)
        with self.transaction():
            present = {int(r[0]) for r in self.conn.execute(
                "SELECT image_id FROM round_items WHERE round_id=?", (rnd["id"],))}
            unknown = set(order) - present
            if unknown:
                raise StoreError(f"images {sorted(unknown)[:5]} are not in round {number}")
            self.conn.executemany(
                "UPDATE round_items SET rank=?, score=? WHERE round_id=? AND image_id=?",
                [(int(rank), None if score is None else float(score), rnd["id"], int(i))
                 for i, (rank, score) in order.items()])

    def queued_ids(self) -> set[int]:
        """Images placed in any round (whether labelled yet or not)."""
        return {int(r[0]) for r in self.conn.execute("SELECT DISTINCT image_id FROM round_items")}

    def taken_ids(self, ids: Iterable[int]) -> set[int]:
        """Those of ``ids`` that are queued in a round or hold a current label with values.

        The queue checks its picks with this inside the transaction that records the round:
        an indexed look-up per id, so it costs the same at 10k or 1M images.
        """
        rows = self.conn.execute(
            f"SELECT w.value FROM {_IDS} w WHERE "
            "EXISTS (SELECT 1 FROM round_items i WHERE i.image_id=w.value) OR EXISTS ("
            " SELECT 1 FROM labels l JOIN label_values v ON v.label_id=l.id "
            " WHERE l.image_id=w.value AND l.is_current=1)",
            (_ids_json(ids),))
        return {int(r[0]) for r in rows}

    def unlabelled_ids(self, *, exclude_splits: Iterable[str] = (),
                       exclude_queued: bool = False) -> list[int]:
        labelled = self.labelled_ids()
        queued = self.queued_ids() if exclude_queued else set()
        skip = tuple(exclude_splits)
        sql = "SELECT id FROM images"
        if skip:
            sql += f" WHERE split NOT IN ({','.join('?' * len(skip))})"
        ids = [int(r[0]) for r in self.conn.execute(sql + " ORDER BY id", skip)]
        return [i for i in ids if i not in labelled and i not in queued]

    # -- evaluation set -------------------------------------------------------------------
    def eval_set_ids(self) -> list[int]:
        """Members of the evaluation set in draw order (empty: the project has none yet)."""
        return [int(r[0]) for r in self.conn.execute(
            "SELECT image_id FROM eval_set ORDER BY position")]

    def add_to_eval_set(self, image_ids: Sequence[int]) -> list[int]:
        """Append test-split images to the evaluation set; returns the ones newly added.

        Only test-split images qualify: the split is fixed per group (video block), so an
        evaluation image never shares a group with a training image, and training, the queue
        and pool scoring already leave the test split alone.
        """
        added: list[int] = []
        with self.transaction():
            members = set(self.eval_set_ids())
            position = int(self.conn.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM eval_set").fetchone()[0])
            for image_id in image_ids:
                image_id = int(image_id)
                if image_id in members:
                    continue
                split = self.image(image_id).split
                if split != "test":
                    raise StoreError(f"image {image_id} is in the {split} split; only test-split "
                                     "images can join the evaluation set")
                self.conn.execute("INSERT INTO eval_set(image_id, position, added_at) "
                                  "VALUES (?,?,?)", (image_id, position, _now()))
                members.add(image_id)
                added.append(image_id)
                position += 1
        return added

    # -- models ---------------------------------------------------------------------------
    def add_model(self, path: str, *, round_id: int | None = None, parent_id: int | None = None,
                  params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                  make_current: bool = True, backbone: str = "resnet18",
                  weights_origin: Mapping[str, Any] | None = None) -> int:
        with self.transaction():
            if make_current:
                self.conn.execute("UPDATE models SET is_current=0")
            cur = self.conn.execute(
                "INSERT INTO models(path, round_id, parent_id, status, is_current, params, metrics,"
                " created_at, backbone, weights_origin) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (path, round_id, parent_id, "ready", int(make_current),
                 json.dumps(dict(params or {})), json.dumps(dict(metrics or {})), _now(),
                 backbone, json.dumps(dict(weights_origin or {}))))
        return int(cur.lastrowid)

    def set_model_metrics(self, model_id: int, metrics: Mapping[str, Any]) -> None:
        self.conn.execute("UPDATE models SET metrics=? WHERE id=?",
                          (json.dumps(dict(metrics)), model_id))

    def set_current_model(self, model_id: int) -> None:
        with self.transaction():
            self.conn.execute("UPDATE models SET is_current=0")
            self.conn.execute("UPDATE models SET is_current=1 WHERE id=?", (model_id,))

    def models(self) -> list[dict[str, Any]]:
        out = []
        for r in self.conn.execute("SELECT * FROM models ORDER BY id"):
            out.append(self._model_row(r))
        return out

    @staticmethod
    def _model_row(row: sqlite3.Row) -> dict[str, Any]:
        """A models row with its JSON columns decoded."""
        d = dict(row)
        for key in ("params", "metrics", "weights_origin"):
            d[key] = json.loads(d[key])
        return d

    def current_model(self) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM models WHERE is_current=1 ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return self._model_row(row)

    # -- predictions and scores -----------------------------------------------------------
    def save_predictions(self, model_id: int, rows: Iterable[tuple[int, str, str, float]]) -> None:
        """rows: (image_id, attribute, predicted value, probability); replaces earlier ones."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO predictions(model_id, image_id, attribute, value, prob) "
                "VALUES (?,?,?,?,?)", [(model_id, *r) for r in rows])

    def save_scores(self, model_id: int, rows: Iterable[tuple[int, str, float]]) -> None:
        """rows: (image_id, score name, value); replaces earlier ones."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO scores(model_id, image_id, name, value) VALUES (?,?,?,?)",
                [(model_id, *r) for r in rows])

    def predictions(self, model_id: int, ids: Iterable[int] | None = None) -> dict[int, dict[str, tuple[str, float]]]:
        """{image_id: {attribute: (value, prob)}}; with ``ids``, an indexed look-up of those only."""
        sql = "SELECT image_id, attribute, value, prob FROM predictions WHERE model_id=?"
        args: tuple[Any, ...] = (model_id,)
        if ids is not None:
            sql += f" AND image_id IN {_IDS}"
            args += (_ids_json(ids),)
        out: dict[int, dict[str, tuple[str, float]]] = {}
        for image_id, attr, value, prob in self.conn.execute(sql, args):
            out.setdefault(int(image_id), {})[attr] = (value, float(prob))
        return out

    def delete_scores(self, model_id: int, names: Iterable[str]) -> None:
        """Drop a model's stored scores with these names (a measure a new pass did not compute)."""
        names = list(names)
        if names:
            self.conn.execute(
                f"DELETE FROM scores WHERE model_id=? AND name IN ({','.join('?' * len(names))})",
                (model_id, *names))

    def scores(self, model_id: int, name: str) -> dict[int, float]:
        return {int(i): float(v) for i, v in self.conn.execute(
            "SELECT image_id, value FROM scores WHERE model_id=? AND name=?", (model_id, name))}

    # -- jobs -----------------------------------------------------------------------------
    def create_job(self, kind: str, params: Mapping[str, Any] | None = None) -> int:
        t = _now()
        cur = self.conn.execute(
            "INSERT INTO jobs(kind, status, params, created_at, updated_at) VALUES (?,?,?,?,?)",
            (kind, "queued", json.dumps(dict(params or {})), t, t))
        return int(cur.lastrowid)

    def update_job(self, job_id: int, *, status: str | None = None, progress: float | None = None,
                   message: str | None = None, result: Mapping[str, Any] | None = None,
                   pid: int | None = None, pid_started: str | None = None,
                   log_entry: Mapping[str, Any] | None = None) -> None:
        """Update a job row. ``pid_started`` is the worker's process start time as the OS
        reports it (see core.jobs); with the pid it names one process, even after PID reuse."""
        sets, args = ["updated_at=?"], [_now()]
        for col, val in (("status", status), ("progress", progress), ("message", message),
                         ("pid", pid), ("pid_started", pid_started)):
            if val is not None:
                sets.append(f"{col}=?")
                args.append(val)
        if result is not None:
            sets.append("result=?")
            args.append(json.dumps(dict(result)))
        with self.transaction():
            if log_entry is not None:
                log = json.loads(self.conn.execute(
                    "SELECT log FROM jobs WHERE id=?", (job_id,)).fetchone()[0])
                log.append(dict(log_entry))
                sets.append("log=?")
                args.append(json.dumps(log))
            self.conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))

    def request_cancel(self, job_id: int) -> None:
        self.conn.execute("UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=?",
                          (_now(), job_id))

    def job(self, job_id: int) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id}")
        d = dict(row)
        for key in ("params", "result", "log"):
            d[key] = json.loads(d[key])
        return d

    def jobs(self, kind: str | None = None, *, active_only: bool = False) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM jobs", []
        clauses = []
        if kind:
            clauses.append("kind=?")
            args.append(kind)
        if active_only:
            clauses.append("status IN ('queued','running')")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        out = []
        for row in self.conn.execute(sql + " ORDER BY id", args):
            d = dict(row)
            for key in ("params", "result", "log"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    # -- status ---------------------------------------------------------------------------
    def status_counts(self) -> dict[str, Any]:
        """Counts for ``status``: images by split, labelled by source, rounds, rejects.

        Label counts are SQL aggregates over the current label versions, which carry their
        image's split (their cost follows the number of labels); pool counts come from
        ``image_counts``, kept by triggers. Nothing here reads a pool row.
        """
        q = self.conn.execute
        by_split = {s: 0 for s in SPLITS}
        by_split.update({r[0]: r[1] for r in q("SELECT split, n FROM image_counts")})
        total = sum(by_split.values())
        # Current label versions carry their split (migration 5): no pool row is read, so the
        # cost follows the number of labels, not of images.
        is_current = "l.is_current=1"
        labelled_by_split = {s: 0 for s in SPLITS}
        label_sources: dict[str, int] = {}
        for source, split, has_values, count in q(
                f"SELECT l.source, l.split, {self._HAS_VALUES} AS has_values, COUNT(*) "
                f"FROM labels l WHERE {is_current} GROUP BY 1, 2, 3"):
            label_sources[source] = label_sources.get(source, 0) + count
            if has_values:
                labelled_by_split[split] = labelled_by_split.get(split, 0) + count
        labelled = sum(labelled_by_split.values())
        per_attr = {r[0]: r[1] for r in q(
            "SELECT v.attribute, COUNT(*) FROM labels l CROSS JOIN label_values v "
            f"ON v.label_id=l.id WHERE {is_current} GROUP BY v.attribute ORDER BY MIN(v.rowid)")}
        rounds = [{"number": r["number"], "kind": r["kind"], "strategy": r["strategy"],
                   "size": r["size"]} for r in self.rounds()]
        return {
            "images": total,
            "by_split": by_split,
            "labelled": labelled,
            "unlabelled": total - labelled,
            "labelled_by_split": labelled_by_split,
            "labelled_by_source": label_sources,
            "labelled_by_attribute": per_attr,
            "rounds": rounds,
            "rejects": int(q("SELECT COUNT(*) FROM rejects").fetchone()[0]),
            "models": int(q("SELECT COUNT(*) FROM models").fetchone()[0]),
        }
