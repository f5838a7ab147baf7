"""Evaluate: confusion matrices and per-class P/R/F1 per head for any model, each accuracy beside
the majority-class baseline; compare two models. Every figure is in percent."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core.dashboard import evaluation_report  # noqa: E402
from core.evaluation_view import HeadBaseline, comparison_rows, report_baselines  # noqa: E402


def model_label(m: dict[str, Any], rounds: dict[int, int]) -> str:
    rnd = rounds.get(m["round_id"])
    parts = [f"model #{m['id']}"]
    if rnd is not None:
        parts.append(f"round {rnd}")
    if m["metrics"].get("train", {}).get("n") is not None:
        parts.append(f"{m['metrics']['train']['n']} train images")
    if m["is_current"]:
        parts.append("current")
    return " · ".join(parts)


def confusion_figure(head: dict[str, Any]) -> go.Figure:
    cm = np.asarray(head["confusion_matrix"], dtype=float)
    classes = head["classes"]
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    fig = px.imshow(share, x=classes, y=classes, color_continuous_scale="Blues", zmin=0, zmax=1,
                    labels=dict(x="predicted", y="true", color="share of row"), aspect="auto")
    fig.update_traces(text=cm.astype(int), texttemplate="%{text}")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def per_class_table(head: dict[str, Any]) -> pd.DataFrame:
    """Per-class precision, recall and F1 in percent, with the support."""
    df = pd.DataFrame(head["per_class"]).T
    df.index.name = "class"
    df[["precision", "recall", "f1"]] = df[["precision", "recall", "f1"]].astype(float) * 100
    return df[["precision", "recall", "f1", "support"]].rename(
        columns={"precision": "precision (%)", "recall": "recall (%)", "f1": "F1 (%)"})


def baseline_metric(col, base: HeadBaseline | None) -> None:
    if base is None or base.accuracy is None:
        col.metric("Majority baseline", "n/a", help="no training labels for this head yet")
        return
    col.metric("Majority baseline", f"{base.accuracy:.1%}",
               help=f"always answering '{base.majority_class}', the most frequent class in the "
                    f"training labels ({base.train_share:.0%} of them), on these same "
                    f"{base.n} images")


def show_report(report: dict[str, Any], key: str,
                baselines: dict[str, HeadBaseline]) -> None:
    st.caption(f"{report['n_images']} labelled {report['split']} images. The majority baseline "
               "always answers the most frequent class of the training labels: a model that "
               "does not beat it has learnt nothing useful for that head.")
    tabs = st.tabs(list(report["heads"]))
    for tab, (attr, head) in zip(tabs, report["heads"].items()):
        with tab:
            if not head["n"]:
                st.info(f"No {attr} labels in the {report['split']} split.")
                continue
            base = baselines.get(attr)
            c = st.columns(4)
            delta = None
            if base is not None and base.accuracy is not None:
                delta = f"{(head['accuracy'] - base.accuracy) * 100:+.1f} points vs baseline"
            c[0].metric("Accuracy", f"{head['accuracy']:.1%}", delta)
            baseline_metric(c[1], base)
            c[2].metric("Macro F1", f"{head['macro_f1']:.1%}")
            c[3].metric("Images", head["n"])
            if base is not None and base.accuracy is not None and head["accuracy"] <= base.accuracy:
                st.warning(f"{attr}: the model does not beat always answering "
                           f"'{base.majority_class}' ({base.accuracy:.1%} on these images).",
                           icon=":material/warning:")
            left, right = st.columns([3, 2])
            left.plotly_chart(confusion_figure(head), width="stretch", key=f"cm_{key}_{attr}")
            right.dataframe(per_class_table(head).style.format(
                {"precision (%)": "{:.1f}", "recall (%)": "{:.1f}", "F1 (%)": "{:.1f}",
                 "support": "{:.0f}"}), width="stretch")


def compare(a: dict[str, Any], b: dict[str, Any], la: str, lb: str,
            baselines: dict[str, HeadBaseline]) -> None:
    rows = comparison_rows(a, b, la, lb, baselines)
    st.caption(f"All figures in percent; Δ is {lb} minus {la} in percentage points; the majority "
               f"baseline is measured on {lb}'s evaluated images.")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.1f")
                                for k in rows[0] if k != "head"} if rows else None)
    attr = st.selectbox("Per-class F1 of", list(a["heads"]), key="cmp_attr")
    fa = {c: 100 * v["f1"] for c, v in a["heads"][attr]["per_class"].items()}
    fb = {c: 100 * v["f1"] for c, v in b["heads"].get(attr, {}).get("per_class", {}).items()}
    fig = go.Figure()
    fig.add_bar(name=la, x=list(fa), y=list(fa.values()))
    fig.add_bar(name=lb, x=list(fb), y=list(fb.values()))
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=10, b=10),
                      yaxis=dict(range=[0, 100], title="F1 (%)"))
    st.plotly_chart(fig, width="stretch", key="cmp_chart")


def body() -> None:
    ui.page("Evaluate")
    ws = ui.workspace()
    with ui.store() as s:
        ui.require_images(s)
        models = [m for m in s.models() if m["status"] != "failed"]
        rounds = {r["id"]: r["number"] for r in s.rounds()}
    if not models:
        st.info("No trained model yet: train one on the Train page.", icon=":material/info:")
        ui.link("views/4_Train.py", "Train", ":material/model_training:")
        return
    ui.job_panel("evaluate", key="evaluate")
    labels = {m["id"]: model_label(m, rounds) for m in models}
    current = next((m["id"] for m in models if m["is_current"]), models[-1]["id"])
    ids = [m["id"] for m in reversed(models)]
    chosen = st.selectbox("Model", ids, index=ids.index(current), format_func=labels.get)
    model = next(m for m in models if m["id"] == chosen)
    report = evaluation_report(ws, model)
    if report is None:
        st.info("This model has not been evaluated on the test split yet.")
        if ui.offer("evaluate", "Evaluate now") and st.button(
                "Evaluate now", icon=":material/analytics:", disabled=ui.busy("evaluate")):
            if ui.start("evaluate", {"model_id": chosen}):
                st.rerun()
        return
    with ui.store() as s:
        baselines = report_baselines(s, ws.schema, report)
    show_report(report, key=str(chosen), baselines=baselines)

    others = [i for i in ids if i != chosen]
    if others:
        st.subheader("Compare two models")
        other = st.selectbox("Compare with", others, format_func=labels.get)
        other_report = evaluation_report(ws, next(m for m in models if m["id"] == other))
        if other_report is None:
            st.info(f"{labels[other]} has no test evaluation.")
        else:
            compare(other_report, report, f"#{other}", f"#{chosen}", baselines)


ui.run_page(body)
