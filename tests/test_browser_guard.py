"""The model guardrails in a real browser: a worse model is not made current and the Train page
says why; "Make it current anyway" overrides the gate; "Make #1 current" rolls back.

The worse model is trained for real (one tiny epoch) through :func:`core.training.train_and_promote`
on a copy of the browser suite's "trained" workspace, after the current model's stored accuracy
on the same evaluation set has been set to 100 %: the gate compares against those figures (same
fingerprint) and refuses. Reuses the app server, Chromium and helpers of tests/test_browser.py.
"""
from __future__ import annotations

import time

import pytest

from data.workspace import Workspace
from test_browser import browser, launch, open_page, page, settle, shoot, templates  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _train_a_worse_model(ws: Workspace) -> int:
    import torch

    from core.training import train_and_promote
    from models.train import TrainConfig

    with ws.store() as store:
        current = store.current_model()
        metrics = dict(current["metrics"])
        assert metrics["test"]["eval_set"]["fingerprint"]  # measured on the evaluation set
        metrics["test"] = {**metrics["test"],
                           "accuracy": {a: 1.0 for a in metrics["test"]["accuracy"]}}
        store.set_model_metrics(current["id"], metrics)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = train_and_promote(ws, TrainConfig(epochs=1, batch_size=16, image_size=32,
                                                    pretrained=False, num_threads=1))
    finally:
        torch.set_num_threads(old)
    assert outcome.refused, outcome.decision
    return int(outcome.model_id)


def _wait_current(ws: Workspace, model_id: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with ws.store() as store:
            if store.current_model()["id"] == model_id:
                return
        assert time.monotonic() < deadline, f"model #{model_id} did not become current"
        time.sleep(0.2)


def test_a_worse_model_is_not_promoted_then_made_current_and_rolled_back(launch, page) -> None:
    url, ws = launch("trained")
    new = _train_a_worse_model(ws)
    with ws.store() as store:
        first = store.current_model()["id"]
    assert first != new
    open_page(page, url, "Train", f"Model #{new} was not made current")
    banner = page.locator("[data-testid='stMarkdownContainer']",
                          has_text=f"Model #{new} was not made current").first.inner_text()
    assert "worse than the current model" in banner and "100.0%" in banner
    page.get_by_text(f"Current model #{first}", exact=False).first.wait_for()
    shoot(page, "train_refused")
    page.get_by_role("button", name="Make it current anyway").click()
    page.get_by_text(f"Model #{new} is now current.", exact=False).first.wait_for()
    settle(page)
    _wait_current(ws, new)
    page.get_by_role("button", name=f"Make #{first} current").click()   # the rollback
    page.get_by_text(f"Model #{first} is now current.", exact=False).first.wait_for()
    _wait_current(ws, first)
    from data.accounts import audit_entries
    with ws.store() as store:
        trail = [e for e in audit_entries(store) if e["action"] == "promote"][:2]
    assert [e["details"]["model_id"] for e in trail] == [first, new]
