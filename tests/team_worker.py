"""The racing process of tests/test_team.py: claim and label a round's images as one annotator.

Run as ``python tests/team_worker.py DB ROUND_ID ANNOTATOR GO OUT``. Waits for the file GO, then
claims the next image (core.claims.claim_next), saves a label for it and releases the claim, until
nothing is left; writes the image ids it labelled to OUT as JSON. A short sleep between picking a
free image and writing its claim holds the race window open, so without the IMMEDIATE transaction
both processes would pick (and label) the same images.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(db: str, round_id: str, annotator: str, go: str, out: str) -> None:
    import core.claims as claims
    from data.store import ProjectStore

    real = claims._take

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)

    claims._take = slow
    store = ProjectStore(db)
    Path(out + ".ready").touch()  # imports done: the test starts both workers together
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(go)
        time.sleep(0.01)
    done = []
    while True:
        claim = claims.claim_next(store, int(round_id), annotator)
        if claim is None:
            break
        with store.transaction():
            store.add_label(claim.image_id, {"color": "red"}, source="builtin",
                            annotator=annotator, round_id=int(round_id), skip_if_same=False)
            claims.release(store, claim.image_id, annotator)
        done.append(claim.image_id)
        time.sleep(0.03)  # the person looks at the next image (SQLite's lock is not fair)
    Path(out).write_text(json.dumps(done))


if __name__ == "__main__":
    main(*sys.argv[1:])
