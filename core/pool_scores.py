"""What one scoring pass over the pool produced, and its file format (no torch needed to read it).

Split out of :mod:`core.scoring` so the dashboard pages and the head-refit status can read saved
pool scores without importing the network code (torch takes seconds to import on a busy machine,
which a page must not wait for). :mod:`core.scoring` re-exports every name here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core import acquisition as acq
from core.model_records import model_folder
from data.workspace import Workspace

EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDING_IDS_FILE = "embedding_ids.npy"
POOL_SCORES_FILE = "pool_scores.npz"
MEASURES = ("entropy", "margin", "least_confidence", "bald")


class ScoringError(RuntimeError):
    """Scoring cannot run (no export when one was required, nothing to score, ...)."""


class MissingMeasure(ScoringError):
    """The saved scores lack a measure (BALD scored with ``mc_passes=0``)."""


@dataclass
class PoolScores:
    """Everything one scoring pass produced for a set of images (row i = ``image_ids[i]``).

    ``bald`` holds per-head BALD only when ``mc_passes > 0``; ``uncertainty`` is every per-head
    measure that was computed, ``{measure: {attribute: (N,)}}``, filled once from ``probs`` and
    ``bald`` by :func:`core.acquisition.uncertainty_per_head` unless given.
    """

    model_id: int
    image_ids: np.ndarray
    probs: dict[str, np.ndarray]
    embeddings: np.ndarray
    bald: dict[str, np.ndarray]
    class_names: dict[str, list[str]]
    backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    mc_passes: int = 0
    uncertainty: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mc_passes <= 0:
            self.bald = {}
        if not self.uncertainty:
            self.uncertainty = acq.uncertainty_per_head(self.probs)
            if self.bald:
                self.uncertainty["bald"] = dict(self.bald)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def attributes(self) -> list[str]:
        return list(self.probs)

    @property
    def measures(self) -> list[str]:
        """The measures this pass computed (BALD only with MC-dropout passes)."""
        return [m for m in MEASURES if m in self.uncertainty]

    def per_head(self, measure: str) -> dict[str, np.ndarray]:
        """{attribute: (N,)} uncertainty for a measure in :attr:`measures`."""
        if measure not in self.uncertainty:
            if measure == "bald":
                raise MissingMeasure("these scores have no BALD (scored without MC-dropout "
                                     "passes); score again with --mc-passes above 0")
            raise MissingMeasure(f"these scores have no {measure!r}")
        return self.uncertainty[measure]

    def subset(self, rows: np.ndarray | Sequence[int]) -> "PoolScores":
        rows = np.asarray(rows, dtype=np.int64)
        return PoolScores(self.model_id, self.image_ids[rows],
                          {a: p[rows] for a, p in self.probs.items()}, self.embeddings[rows],
                          {a: b[rows] for a, b in self.bald.items()}, self.class_names,
                          self.backend, dict(self.timings), self.mc_passes,
                          {m: {a: v[rows] for a, v in per.items()}
                           for m, per in self.uncertainty.items()})

    def predictions(self) -> list[tuple[int, str, str, float]]:
        """(image_id, attribute, predicted class, probability) rows for the store."""
        rows: list[tuple[int, str, str, float]] = []
        for a, p in self.probs.items():
            idx = p.argmax(axis=1)
            top = p[np.arange(len(p)), idx]
            names = self.class_names[a]
            rows.extend((int(i), a, names[int(k)], float(v))
                        for i, k, v in zip(self.image_ids, idx, top))
        return rows

    def score_rows(self) -> list[tuple[int, str, float]]:
        """(image_id, name, value) rows: every computed measure per head and its mean over heads."""
        rows: list[tuple[int, str, float]] = []
        ids = [int(i) for i in self.image_ids]
        for measure in self.measures:
            per = self.uncertainty[measure]
            for a, v in per.items():
                name = acq.score_name(measure, a)
                rows.extend(zip(ids, [name] * len(ids), v.astype(float).tolist()))
            combined = acq.combine_mean(per)
            rows.extend(zip(ids, [measure] * len(ids), combined.astype(float).tolist()))
        return rows

    def save_arrays(self, folder: Path) -> None:
        """Write embeddings (.npy keyed by id) and the full pool scores (.npz) atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_npy(folder / EMBEDDING_IDS_FILE, self.image_ids.astype(np.int64))
        _atomic_npy(folder / EMBEDDINGS_FILE, self.embeddings.astype(np.float32))
        arrays = {"image_ids": self.image_ids.astype(np.int64),
                  "embeddings": self.embeddings.astype(np.float32)}
        for a in self.attributes:
            arrays[f"probs/{a}"] = self.probs[a].astype(np.float32)
            arrays[f"classes/{a}"] = np.asarray(self.class_names[a])
        for m, per in self.uncertainty.items():
            for a, v in per.items():
                arrays[f"score/{m}/{a}"] = np.asarray(v, dtype=np.float32)
        arrays["meta/model_id"] = np.asarray(self.model_id)
        arrays["meta/backend"] = np.asarray(self.backend)
        arrays["meta/mc_passes"] = np.asarray(int(self.mc_passes))
        tmp = folder / (POOL_SCORES_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(folder / POOL_SCORES_FILE)


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def load_pool_scores(folder: str | Path) -> PoolScores | None:
    """Read back what :meth:`PoolScores.save_arrays` wrote, or None if the folder has none."""
    path = Path(folder) / POOL_SCORES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        attrs = [k.split("/", 1)[1] for k in z.files if k.startswith("probs/")]
        # a file from before mc_passes was recorded cannot tell real BALD from zeros: treat
        # its BALD as missing (the queue rescores when a strategy needs it)
        passes = int(z["meta/mc_passes"]) if "meta/mc_passes" in z.files else 0
        uncertainty: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            if key.startswith("score/"):
                _, m, a = key.split("/", 2)
                uncertainty.setdefault(m, {})[a] = z[key]
        if passes <= 0:
            uncertainty.pop("bald", None)
        return PoolScores(
            model_id=int(z["meta/model_id"]), image_ids=z["image_ids"],
            probs={a: z[f"probs/{a}"] for a in attrs}, embeddings=z["embeddings"],
            bald=dict(uncertainty.get("bald", {})),
            class_names={a: [str(c) for c in z[f"classes/{a}"]] for a in attrs},
            backend=str(z["meta/backend"]), mc_passes=passes, uncertainty=uncertainty)


def pool_scores_for(ws: Workspace, model_id: int) -> PoolScores | None:
    """The saved scoring pass of ``model_id`` (None when the pool was never scored with it)."""
    return load_pool_scores(model_folder(ws, model_id))
