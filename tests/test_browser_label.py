"""The Label page in a real browser (issue 13): the annotator name survives a reload, the
all-unsure guard, and the time from a Save & next to the next image shown.

The time is measured, not asserted (speed belongs to benchmarks on an idle machine): it is
printed and written to ``test-artifacts/label_speed.json`` with the machine's load average.
Reuses the app server, workspace templates and browser fixtures of tests/test_browser.py.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import time

import pytest

from test_browser import REPO, browser, launch, open_page, page, settle, shoot, templates  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
CAPTION = re.compile(r"#\d+ of \d+ · (\S+)")
N_TIMED = 4


def shown_image(page) -> str:
    """The name of the image the page shows now (from its caption '#n of m · name · split')."""
    match = CAPTION.search(page.locator("body").inner_text())
    assert match, "no image caption on the page"
    return match.group(1)


def wait_for_next_image(page, old: str, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        """old => { const m = document.body.innerText.match(/#\\d+ of \\d+ · (\\S+)/);
                    return m !== null && m[1] !== old; }""", arg=old, timeout=timeout_ms)


def test_label_page_guard_name_and_save_and_next_time(launch, page) -> None:  # noqa: F811
    url, ws = launch("round0")
    open_page(page, url, "Label", "Save & next")
    name_box = page.get_by_label("Annotator", exact=True)
    name_box.fill("kim")
    name_box.press("Tab")
    settle(page)
    page.wait_for_url(re.compile(r"annotator=kim"))  # the name went into the address
    page.reload()                                   # a reload keeps the name (in the address)
    page.get_by_text("Save & next").first.wait_for(timeout=60_000)
    settle(page)
    assert page.get_by_label("Annotator", exact=True).input_value() == "kim"
    page.get_by_text("Labelling guide").first.click()  # the guide beside the buttons opens
    page.get_by_text("Examples per class", exact=False).first.wait_for()
    page.get_by_role("tab", name="Orientation").click()
    page.get_by_text("The eight views", exact=False).first.wait_for()
    page.get_by_text("nose points to the", exact=False).first.wait_for()
    shoot(page, "label_guide")

    # the all-unsure guard: nothing chosen, one Enter stores nothing and asks again
    page.locator("h1").first.click()  # focus out of the text box so keys reach the shortcuts
    first = shown_image(page)
    page.keyboard.press("Enter")
    page.get_by_text("Press Save & next again", exact=False).first.wait_for()
    settle(page)
    with ws.store() as store:
        assert store.current_labels(include_empty=True) == {}
    assert shown_image(page) == first
    page.keyboard.press("Enter")                    # the second press confirms
    wait_for_next_image(page, first)
    settle(page)
    with ws.store() as store:
        [(image_id, values)] = store.current_labels(include_empty=True).items()
        assert values == {} and store.image(image_id).name == first

    # label a few images with the keyboard and time each Save & next until the next image shows
    timings, server = [], []
    for _ in range(N_TIMED):
        current = shown_image(page)
        for key in ("1", "Q", "A"):                 # red, hatchback, front
            page.keyboard.press(key)
            settle(page)
        started = time.perf_counter()
        page.keyboard.press("Enter")
        wait_for_next_image(page, current)
        timings.append((time.perf_counter() - started) * 1000)
        settle(page)
        found = re.search(r"last save & next (\d+) ms", page.locator("body").inner_text())
        if found:
            server.append(int(found.group(1)))
    shoot(page, "label_fragment")
    with ws.store() as store:
        labels = store.current_labels()
        versions = [store.current_label(i) for i in labels]
    assert len(labels) == N_TIMED
    assert all(v.values == {"color": "red", "type": "hatchback", "orientation": "front"}
               and v.annotator == "kim" for v in versions)
    result = {"click_to_next_image_ms": [round(t) for t in timings],
              "median_click_to_next_image_ms": round(statistics.median(timings)),
              "server_save_and_next_ms": server, "load_average": os.getloadavg(),
              "pool_images": 60}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "label_speed.json").write_text(json.dumps(result, indent=2))
    print("Save & next:", result)
