"""The second (and third) process of the race tests in test_races.py.

Run as ``python tests/race_worker.py MODE ARGS...`` from the repository root. Each mode does one
thing the app or the CLI does, widened where needed with a sleep at the exact spot where the
race happens (the test says which), so the race shows on every run instead of now and then.
A mode waits for ``GO`` (a file path) to exist before its racing step, so the processes start
together after their slow imports.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wait_for(path: str | Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def cache_appends(cache_dir: str, tag: str, n: str, go: str, out: str) -> None:
    """Append ``n`` one-row batches whose pixels all equal ``tag``; write the returned rows."""
    import numpy as np

    from data.cache import ImageCache

    cache = ImageCache(cache_dir, 8)
    wait_for(go)
    rows = []
    for _ in range(int(n)):
        rows += cache.append(np.full((1, 8, 8, 3), int(tag), dtype=np.uint8))
    Path(out).write_text(json.dumps(rows))


def queue_random(ws_dir: str, top_k: str, delay: str, go: str, out: str) -> None:
    """build_queue('random', top_k) with ``delay`` seconds spent in the selection step."""
    import core.queue as queue
    from data.workspace import Workspace

    real = queue.select

    def slow_select(*args, **kwargs):
        time.sleep(float(delay))
        return real(*args, **kwargs)

    queue.select = slow_select
    ws = Workspace(ws_dir)
    wait_for(go)
    result = queue.build_queue(ws, "random", int(top_k), seed=int(time.time_ns() % 1000))
    Path(out).write_text(json.dumps({"round": result.round_number, "ids": result.image_ids}))


def open_store(db: str, delay: str, go: str) -> None:
    """Open (and so migrate) a store, ``delay`` seconds passing after each schema-version read."""
    from data import store as store_mod

    real = store_mod.ProjectStore.schema_version

    def slow_version(self):
        value = real.fget(self)
        time.sleep(float(delay))
        return value

    store_mod.ProjectStore.schema_version = property(slow_version)
    wait_for(go)
    store_mod.ProjectStore(db).close()


def merge_record(ws_dir: str, number: str, prefix: str, n: str, delay: str, go: str) -> None:
    """update_round_record with ``n`` keys, one call each, ``delay`` s after each round read."""
    from data import store as store_mod
    from data.workspace import Workspace

    real = store_mod.ProjectStore.round

    def slow_round(self, number):
        value = real(self, number)
        time.sleep(float(delay))
        return value

    store_mod.ProjectStore.round = slow_round
    wait_for(go)
    with Workspace(ws_dir).store() as store:
        for i in range(int(n)):
            store.update_round_record(int(number), {f"{prefix}{i}": i})


def cli_demo_pool(ws_dir: str, started: str, release: str) -> None:
    """``python -m core demo-pool`` whose pool building waits for ``release``."""
    import data.demo as demo
    from core.cli import main

    def held_pool(ws, n, **kwargs):
        Path(started).write_text("1")
        wait_for(release)
        from data.ingest import IngestReport
        return IngestReport(source="held")

    demo.create_demo_pool = held_pool
    sys.exit(main(["--workspace", ws_dir, "demo-pool", "--n", "4", "--quiet"]))


def train_then_queue(ws_dir: str, started: str, release: str) -> None:
    """A training job with ``then_queue``; training is faked, the ranking waits for ``release``."""
    import core.job_runners as runners
    import core.queue as queue
    from types import SimpleNamespace

    from core.jobs import run_job, start_job
    from data.workspace import Workspace

    runners.train_and_promote = lambda ws, config, **kwargs: SimpleNamespace(
        cancelled=False, promoted=True, refused=False, decision=None, model_id=1, train=None,
        evaluation=None, evaluation_skipped="faked training")
    real = queue.select

    def held_select(*args, **kwargs):
        Path(started).write_text("1")
        wait_for(release)
        return real(*args, **kwargs)

    queue.select = held_select
    ws = Workspace(ws_dir)
    job_id = start_job(ws, "train", {"then_queue": 3, "strategy": "random"}, spawn=False)
    print(run_job(ws, job_id))


if __name__ == "__main__":
    MODES = {"cache": cache_appends, "queue": queue_random, "open": open_store,
             "record": merge_record, "cli_demo": cli_demo_pool, "train_queue": train_then_queue}
    MODES[sys.argv[1]](*sys.argv[2:])
