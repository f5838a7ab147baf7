"""Balance: labelled class counts per attribute and split; orientation before/after flip balancing."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core.dashboard import RARE_FRACTION, class_counts, flip_balance, rare_classes  # noqa: E402
from data.store import SPLITS  # noqa: E402

SPLIT_COLORS = {"train": "#4C78A8", "val": "#72B7B2", "test": "#F58518"}


def attribute_chart(attr: str, per_split: dict[str, dict[str, int]], splits: list[str]) -> go.Figure:
    classes = list(next(iter(per_split.values())))
    fig = go.Figure()
    for split in splits:
        fig.add_bar(name=split, x=classes, y=[per_split[split][c] for c in classes],
                    marker_color=SPLIT_COLORS.get(split))
    # No figure title: the page writes the attribute above the chart, so the legend row at the
    # top never collides with a title (issue 13, section 9).
    fig.update_layout(barmode="stack", height=300, margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"))
    fig.update_yaxes(rangemode="nonnegative")  # counts: no -1..1 axis while nothing is labelled
    totals = {c: sum(per_split[s][c] for s in splits) for c in classes}
    empty, rare = rare_classes(totals)
    for c in empty:
        # upright text standing on the axis: neighbouring empty classes never run together
        fig.add_annotation(x=c, y=0, text="empty", showarrow=False, textangle=-90,
                           yanchor="bottom", yshift=2, font=dict(color="crimson", size=11))
    for c in rare:
        fig.add_annotation(x=c, y=totals[c], text="rare", showarrow=False, yshift=10,
                           font=dict(color="darkorange"))
    return fig


def body() -> None:
    ui.page("Balance")
    ws = ui.workspace()
    schema = ws.schema
    with ui.store() as s:
        ui.require_images(s)
        counts = class_counts(s, schema)
    splits = st.multiselect("Splits", list(SPLITS), default=list(SPLITS))
    if not splits:
        st.info("Pick at least one split.")
        return
    if not any(sum(v.values()) for a in counts.values() for v in a.values()):
        st.info("No labels yet: the charts fill in as images are labelled.", icon=":material/info:")
    st.caption(f"Empty classes are marked in red, rare ones (under {RARE_FRACTION:.0%} of an "
               "attribute's labels) in orange.")
    cols = st.columns(len(schema.attributes))
    for col, attr in zip(cols, schema.attributes):
        with col:
            st.markdown(f"##### {attr}")
            st.plotly_chart(attribute_chart(attr, counts[attr], splits), width="stretch",
                            key=f"bal_{attr}")
            totals = {c: sum(counts[attr][sp][c] for sp in splits) for c in schema.classes[attr]}
            empty, rare = rare_classes(totals)
            if empty:
                st.warning(f"No labels yet: {', '.join(empty)}", icon=":material/block:")
            if rare:
                st.info(f"Rare: {', '.join(rare)}", icon=":material/warning:")

    st.subheader(f"{schema.flip_attribute.capitalize()} before / after flip balancing")
    st.caption("Mirroring an image turns left into right (front-left into front-right, ...); "
               "training with balancing on tops up the rarer side of each mirror pair with "
               "flipped copies. Front and back do not change under a flip.")
    split = st.radio("Split", ["train", "val"], horizontal=True, key="flip_split")
    with ui.guard("Flip balancing"):
        with ui.store() as s:
            plan = flip_balance(s, schema, split)
        classes = list(plan["before"])
        fig = go.Figure()
        fig.add_bar(name="before", x=classes, y=[plan["before"][c] for c in classes],
                    marker_color="#9D9D9D")
        fig.add_bar(name="after flip balancing", x=classes, y=[plan["after"][c] for c in classes],
                    marker_color="#54A24B")
        fig.update_layout(barmode="group", height=320, margin=dict(l=10, r=10, t=10, b=10),
                          legend=dict(orientation="h", y=1.1))
        st.plotly_chart(fig, width="stretch", key="flip_chart")
        table = pd.DataFrame({"before": plan["before"], "after": plan["after"],
                              "added by flipping": {c: plan["added"].get(c, 0) for c in classes}})
        st.dataframe(table.T, width="stretch")
        st.caption(f"{plan['n_flipped']} flipped copies would be added to the {split} split.")


ui.run_page(body)
