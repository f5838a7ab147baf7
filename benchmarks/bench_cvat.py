"""CVAT bridge throughput against the local CVAT test server (the bridge's own overhead).

Measures, for N pool images: push (stage + upload + frame read-back + record), pull (Datumaro
export through cvat-sdk + datumaro parse + one-transaction write) and a second, idempotent
pull. The server is local, so network time is near zero: the figures are what the app adds on
top of a real CVAT's own processing.

    nice .venv/bin/python benchmarks/bench_cvat.py --n 500
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cvat_helpers import CvatTestServer, add_pool, fast_settings  # noqa: E402
from data.workspace import Workspace, WorkspaceConfig  # noqa: E402
from cvat_bridge.client import connect  # noqa: E402
from cvat_bridge.pull import pull  # noqa: E402
from cvat_bridge.push import push_round  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--segment-size", type=int, default=100)
    args = ap.parse_args()
    logging.getLogger("cvat_bridge").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws").init(WorkspaceConfig(cache_size=64))
        ids = add_pool(ws, args.n)
        with CvatTestServer() as srv, ws.store() as store, \
                connect(fast_settings(srv.url, timeout_s=30, operation_timeout_s=120)) as conn:
            number = store.create_round(ids, kind="seed")
            t0 = time.perf_counter()
            res = push_round(conn, ws, store, number, segment_size=args.segment_size)
            t_push = time.perf_counter() - t0
            values = {"color": "red", "type": "sedan", "orientation": "front"}
            srv.set_tags(res.task_id, {Path(n).stem: values for n in srv.frame_names(res.task_id)})
            t0 = time.perf_counter()
            [first] = pull(conn, ws, store)
            t_pull = time.perf_counter() - t0
            t0 = time.perf_counter()
            [second] = pull(conn, ws, store)
            t_repull = time.perf_counter() - t0
    assert first.report.counts["imported"] == args.n
    assert second.report.counts["unchanged"] == args.n
    print(f"n={args.n} jobs={len(res.jobs)}: push {t_push:.2f} s ({args.n / t_push:.0f} img/s), "
          f"pull {t_pull:.2f} s ({args.n / t_pull:.0f} labels/s), "
          f"re-pull {t_repull:.2f} s (0 new)")


if __name__ == "__main__":
    main()
