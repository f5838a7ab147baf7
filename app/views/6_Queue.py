"""Queue: rank the next batch (strategy, head weights, size) and browse it as a thumbnail grid."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import labeling, refit_status as refit  # noqa: E402
from core.acquisition import STRATEGIES  # noqa: E402
from core.dashboard import queue_view  # noqa: E402
from core.queue_view import auto_reason, round_reason  # noqa: E402
from core.score_spread import round_score_spread  # noqa: E402

GRID_COLUMNS = 6
PAGE_SIZE = 48


def controls(ws, has_model: bool, attributes: tuple[str, ...]) -> None:
    with st.container(border=True):
        cols = st.columns([2, 1, 1, 1])
        names = [n for n, s in STRATEGIES.items() if has_model or not s.needs_model]
        default = names.index("auto")
        # the name only in the box: a long description there is cut off; it is written out below
        strategy = cols[0].selectbox("Strategy", names, index=default)
        st.caption(f"**{strategy}**: {STRATEGIES[strategy].description}")
        if strategy == "auto":
            st.caption(f"auto → {auto_reason(ws)}")
        top_k = cols[1].number_input("Batch size", 1, 5000, 100, step=10)
        typical = STRATEGIES[strategy].kind in ("typicality", "auto")
        diversity = cols[2].selectbox("Diversity", ["none", "kcenter", "kmeans"],
                                      disabled=not has_model or typical,
                                      help="Spread the batch over embedding space so it is not "
                                           "many near-identical frames")
        balance = cols[3].checkbox("Favour rare classes", disabled=not has_model or typical)
        weights = {}
        if STRATEGIES[strategy].needs_model:
            st.caption("Head weights (e.g. raise orientation to focus the batch on it)")
            wcols = st.columns(len(attributes))
            for col, attr in zip(wcols, attributes):
                weights[attr] = col.slider(attr, 0.0, 3.0, 1.0, 0.5, key=f"w_{attr}")
        if not has_model:
            st.caption("Until a model is trained: auto/typiclust/probcover pick typical images "
                       "from pretrained-backbone embeddings, or random.")
        if ui.offer("rank", "Rank next batch") and st.button(
                "Rank next batch", type="primary", icon=":material/sort:",
                disabled=ui.busy("queue")):
            params = {"strategy": strategy, "top_k": int(top_k),
                      "diversity": None if diversity == "none" else diversity,
                      "balance": bool(balance), "weights": weights}
            if ui.start("queue", params):
                st.rerun()


def grid(items: list[dict], ws) -> None:
    page_count = max(1, -(-len(items) // PAGE_SIZE))
    page = st.number_input("Page", 1, page_count, 1) if page_count > 1 else 1
    shown = items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    with ui.store() as s:
        records = {r.id: r for r in s.images([it["image_id"] for it in shown])}
        labelled = set(s.current_labels(include_empty=True))
    for start in range(0, len(shown), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, item in zip(cols, shown[start:start + GRID_COLUMNS]):
            with col.container(border=True):
                st.image(labeling.load_display_image(ws, records[item["image_id"]]),
                         width="stretch")
                score = item["score"]
                head = f"**#{item['rank'] + 1}**" + ("" if score != score else f" · score {score:.3f}")
                if item["image_id"] in labelled:
                    head += " · :green[labelled]"
                st.markdown(head)
                lines = []
                for attr, (value, prob) in item["predictions"].items():
                    unc = item["scores"].get(f"entropy:{attr}")
                    lines.append(f"{attr}: {value} {prob:.0%}" + (f" · H {unc:.2f}" if unc is not None else ""))
                st.caption("  \n".join(lines) if lines else "no predictions")


def source_line(ws, number: int) -> None:
    """Where the batch's order comes from: a trained model or the last head refit."""
    cols = st.columns([4, 1])
    cols[0].caption(f"Order: {refit.ranking_source(ws, number)}. The heads are refitted on the "
                    f"cached embeddings every {refit.DEFAULT_EVERY} saved labels and at the end "
                    "of a batch; Retrain on the Train page fine-tunes the whole network.")
    if ui.may_start("refit") and cols[1].button("Refit heads now", icon=":material/bolt:",
                                         width="stretch", disabled=ui.busy("refit"),
                      help="Refit the heads on the current labels and re-rank the open batches "
                           "(seconds once the pool's embeddings are cached)"):
        if ui.start("refit", {}):
            st.rerun()


def body() -> None:
    ui.page("Queue")
    ws = ui.workspace()
    with ui.store() as s:
        ui.require_images(s)
        model = s.current_model()
        infos = labeling.batches(s)
    ui.job_panel("queue", key="queue")
    # the fast loop: shown while a head refit runs; when it ends the page redraws the new order
    ui.job_panel("refit", key="refit", show_finished=False)
    controls(ws, model is not None, ws.schema.attributes)
    if not infos:
        st.info("No batch yet: rank one above, or sample a first batch on the Overview page.")
        return
    numbers = [b.number for b in reversed(infos)]
    by_number = {b.number: b for b in infos}
    cols = st.columns([2, 1, 1])
    number = cols[0].selectbox(
        "Batch", numbers, format_func=lambda n: f"round {n} · {by_number[n].strategy or by_number[n].kind}"
                                                f" · {by_number[n].done}/{by_number[n].total} labelled")
    with cols[1]:
        if st.button("Label here", icon=":material/label:", width="stretch"):
            st.session_state["label_batch_next"] = number
            try:
                st.switch_page("views/1_Label.py")
            except Exception:  # noqa: BLE001 - standalone page (tests): no navigation
                st.info("Open the Label page to start.")
    with cols[2]:
        if ui.may("cvat_push") and st.button("Push to CVAT", icon=":material/cloud_upload:",
                                              width="stretch"):
            st.session_state["cvat_push_round"] = number  # pre-selects the batch there
            try:
                st.switch_page("views/3_CVAT.py")
            except Exception:  # noqa: BLE001 - standalone page (tests): no navigation
                st.info("Open the CVAT page to push this batch.")
    reason = round_reason(ws, number)
    if reason:
        st.info(f"auto chose {reason}", icon=":material/lightbulb:")
    spread = round_score_spread(ws, number)
    if spread is not None and spread.near_uniform:
        st.warning(spread.sentence(), icon=":material/blur_on:")
    source_line(ws, number)
    items = queue_view(ws, number)
    st.caption(f"{len(items)} images, highest priority first. Scores: higher = more useful to "
               "label; H = the head's normalised entropy.")
    grid(items, ws)


ui.run_page(body)
