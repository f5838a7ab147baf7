"""Overview: pool counts, splits, rounds, the learning curve, the current model; onboarding."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core.dashboard import learning_curve  # noqa: E402


def onboarding() -> None:
    st.subheader("Start a project")
    st.write("The pool is empty. Make a synthetic demo pool to try everything, or bring your own "
             "vehicle crops.")
    ui.job_panel(("demo", "ingest"), key="pool")
    left, right = st.columns(2)
    with left.container(border=True):
        st.markdown("#### :material/auto_awesome: Create a demo pool")
        st.caption("Synthetic vehicles with hidden ground truth for all three attributes; a "
                   "simulated annotator can label them.")
        n = st.number_input("Images", min_value=50, max_value=20000, value=600, step=50)
        size = st.select_slider("Image size (px)", options=[32, 48, 64, 96, 128], value=64)
        first = st.number_input("First batch to label", min_value=0, max_value=5000, value=100,
                                step=10, help="Random sample recorded as round 0 (0: none yet)")
        if st.button("Create demo pool", type="primary", icon=":material/auto_awesome:"):
            if ui.start("demo", {"n": int(n), "size": int(size), "sample": int(first)}):
                st.rerun()
    with right.container(border=True):
        st.markdown("#### :material/folder_open: Ingest a folder or upload an archive")
        st.caption("JPEG/PNG crops in a folder, `.zip`, `.tar.gz` or `.tgz`. Bad files are "
                   "reported as rejects; duplicates are collapsed.")
        path = st.text_input("Folder or archive on this machine",
                             placeholder="/data/image_test.tar.gz")
        upload = st.file_uploader("…or upload an archive", type=["zip", "gz", "tgz"])
        if st.button("Ingest", icon=":material/download:", disabled=not (path or upload)):
            target = ui.save_upload(upload) if upload is not None else path.strip()
            if ui.start("ingest", {"path": str(target)}):
                st.rerun()


def pool_summary() -> None:
    with ui.store() as s:
        counts = s.status_counts()
        model = s.current_model()
        curve = learning_curve(s)
    c = st.columns(5)
    c[0].metric("Pool", counts["images"])
    c[1].metric("Labelled", counts["labelled"])
    c[2].metric("Unlabelled", counts["unlabelled"])
    c[3].metric("Rejected", counts["rejects"])
    c[4].metric("Rounds", len(counts["rounds"]))
    ui.job_panel(("demo", "ingest", "sample", "label_sim"), key="pool")

    left, right = st.columns([2, 3])
    with left:
        st.markdown("##### Splits")
        split_df = pd.DataFrame({"images": counts["by_split"],
                                 "labelled": counts["labelled_by_split"]})
        st.dataframe(split_df, width="stretch")
        if counts["labelled_by_source"]:
            st.caption("Labels by source: " + ", ".join(
                f"{k} {v}" for k, v in counts["labelled_by_source"].items()))
        st.markdown("##### Current model")
        if model is None:
            st.info("No model yet. Label the first batch, then train on the **Train** page.")
        else:
            acc = model["metrics"].get("test", {}).get("accuracy", {})
            st.write(f"Model **#{model['id']}**, trained {ui.age_text(model['created_at'])}"
                     + (f", from model #{model['parent_id']} (warm start)" if model["parent_id"] else ""))
            if acc:
                st.write(" · ".join(f"{a}: **{v:.1%}**" for a, v in acc.items() if v is not None))
    with right:
        st.markdown("##### Learning curve (test accuracy per head)")
        if curve:
            df = pd.DataFrame(curve)
            fig = px.line(df, x="labels", y="accuracy", color="head", markers=True,
                          hover_data=["model", "round"],
                          labels={"labels": "labelled training images", "accuracy": "test accuracy"})
            fig.update_yaxes(range=[0, 1], tickformat=".0%")
            fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10))
            st.plotly_chart(fig, width="stretch")
        else:
            st.caption("Appears after the first model has been trained and evaluated.")

    st.markdown("##### Rounds")
    rounds = counts["rounds"]
    if rounds:
        from core.labeling import batches
        with ui.store() as s:
            info = {b.number: b for b in batches(s)}
        st.dataframe(pd.DataFrame([{**r, "done": info[r["number"]].done if r["number"] in info else None}
                                   for r in rounds]), hide_index=True, width="stretch")
    else:
        st.write("No labeling round yet: sample a random first batch (round 0).")
        n = st.number_input("First batch size", min_value=1, value=min(100, counts["images"]))
        if st.button("Sample first batch", icon=":material/casino:"):
            if ui.start("sample", {"n": int(n)}):
                st.rerun()
    next_steps(counts, model)


def next_steps(counts: dict, model: dict | None) -> None:
    st.markdown("##### Next")
    cols = st.columns(4)
    with cols[0]:
        ui.link("pages/1_Label.py", "Label the batch", ":material/label:")
    with cols[1]:
        ui.link("pages/4_Train.py", "Retrain", ":material/model_training:")
    with cols[2]:
        ui.link("pages/6_Queue.py", "Ranked queue", ":material/format_list_numbered:")
    with cols[3]:
        if counts["rounds"] and st.button("Simulated annotator", icon=":material/smart_toy:",
                                          help="Demo pools only: label the open batches from "
                                               "the hidden ground truth"):
            if ui.start("label_sim", {}):
                st.rerun()


def audit_trail() -> None:
    """Who did what, newest first, filtered by person (labels, jobs, promotions, CVAT, users)."""
    from data.accounts import audit_entries, audit_users

    with ui.store() as s:
        people = audit_users(s)
    if not people:
        return
    with st.expander("Audit trail: who did what", icon=":material/history:"):
        person = st.selectbox("Person", ["everyone", *people], key="audit_person")
        with ui.store() as s:
            rows = audit_entries(s, user=None if person == "everyone" else person, limit=500)
        st.dataframe(pd.DataFrame([
            {"when": pd.to_datetime(r["at"], unit="s"), "who": r["user"], "role": r["role"],
             "action": r["action"], "job": r["job_id"],
             "details": ", ".join(f"{k}={v}" for k, v in r["details"].items() if k != "params")}
            for r in rows]), hide_index=True, width="stretch")


def body() -> None:
    ui.page("Overview")
    with ui.store() as s:
        empty = s.count_images() == 0
    if empty:
        onboarding()
    else:
        pool_summary()
    with ui.guard("The audit trail"):
        audit_trail()


ui.run_page(body)
