"""Fixed split assignment and the seeded round-0 sample."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from core.rounds import sample_first_batch
from data.sampling import SamplingError
from data.splits import assign_split
from data.store import ProjectStore

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def test_split_is_a_pure_function_of_key_and_seed() -> None:
    keys = [f"key{i}" for i in range(3000)]
    first = [assign_split(k, FRACTIONS, 0) for k in keys]
    assert first == [assign_split(k, FRACTIONS, 0) for k in keys]
    counts = Counter(first)
    assert abs(counts["train"] / 3000 - 0.7) < 0.04
    assert abs(counts["val"] / 3000 - 0.1) < 0.03
    assert abs(counts["test"] / 3000 - 0.2) < 0.03
    other_seed = [assign_split(k, FRACTIONS, 1) for k in keys]
    assert other_seed != first


def test_split_fractions_edge_cases() -> None:
    assert {assign_split(f"k{i}", {"train": 1.0}) for i in range(50)} == {"train"}
    assert {assign_split(f"k{i}", {"test": 2, "train": 0}) for i in range(50)} == {"test"}
    with pytest.raises(ValueError):
        assign_split("k", {"train": 0.0})


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    s = ProjectStore(tmp_path / "p.db")
    for i in range(50):
        s.add_image(path=f"{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8, height=8,
                    nbytes=1, split="test" if i % 5 == 0 else "train")
    yield s
    s.close()


def test_first_batch_is_seeded_and_recorded_as_round_0(store: ProjectStore, tmp_path: Path) -> None:
    number, ids = sample_first_batch(store, 10, seed=3)
    assert number == 0 and len(set(ids)) == 10
    assert store.round(0)["kind"] == "seed" and store.round(0)["params"] == {"n": 10, "seed": 3}
    other = ProjectStore(tmp_path / "q.db")
    for i in range(50):
        other.add_image(path=f"{i}.jpg", name=f"{i}.jpg", sha256=f"h{i}", width=8, height=8,
                        nbytes=1, split="train")
    assert sample_first_batch(other, 10, seed=3)[1] == ids   # same pool + seed -> same batch
    other.close()


def test_first_batch_skips_labelled_and_queued_and_spans_splits(store: ProjectStore) -> None:
    store.add_label(1, {"color": "red"}, source="builtin")
    _, first = sample_first_batch(store, 20, seed=0)
    assert 1 not in first
    _, second = sample_first_batch(store, 100, seed=0)     # asks for more than is left
    assert not set(first) & set(second)
    assert len(first) + len(second) == 49
    splits = {store.image(i).split for i in first + second}
    assert splits == {"train", "test"}
    with pytest.raises(SamplingError, match="no unlabelled"):
        sample_first_batch(store, 5)
    with pytest.raises(SamplingError, match="positive"):
        sample_first_batch(store, 0)
