"""Overview: pool counts, splits, rounds, the learning curve, the current model; onboarding."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402
from core.labeling import BatchInfo, batch_title, batches, unfinished_rounds  # noqa: E402

from core.dashboard import learning_curve  # noqa: E402
from core import suggestion_stats  # noqa: E402
from core.team_progress import annotator_progress  # noqa: E402
from core.evalset import EvalSetStatus, eval_set_status  # noqa: E402
from data.accounts import audit_entries, audit_users  # noqa: E402
from core.rounds import draw_eval_set  # noqa: E402
from data.evalset import DEFAULT_PER_CLASS, eval_target  # noqa: E402


def eval_per_class_input(key: str, value: int = DEFAULT_PER_CLASS) -> int:
    ws = ui.workspace()
    return int(st.number_input(
        "Evaluation images per class", min_value=0, max_value=1000, value=value, step=5,
        key=f"eval_per_class_{key}",
        help=f"The evaluation set: this many x the largest head's class count "
             f"({eval_target(ws.schema, 1)}) test-split images, labelled before any training "
             "batch and never trained on. Every model is measured on it. 0: none."))


def evaluation_set(status: EvalSetStatus) -> None:
    """Size of the evaluation set (labelled / total, per head), its warnings, and the control."""
    st.markdown("##### Evaluation set")
    if status.exists:
        st.write(f"**{status.labelled} of {status.members}** images labelled "
                 f"(target {status.target}; test split {status.test_images} images)")
        st.dataframe(pd.DataFrame([{"head": h.attribute, "labelled": h.labelled,
                                    "classes seen": f"{sum(1 for n in h.class_counts.values() if n)}"
                                                    f" of {len(h.class_counts)}",
                                    "95% interval": f"±{h.width * 50:.0f} pts"}
                                   for h in status.heads]), hide_index=True, width="stretch")
    for warning in status.warnings:
        st.warning(warning, icon=":material/warning:")
    per_class = eval_per_class_input("overview", status.per_class or DEFAULT_PER_CLASS)
    label = "Grow evaluation set" if status.exists else "Draw evaluation set"
    if ui.offer("sample", label) and st.button(label, icon=":material/fact_check:",
                                               disabled=per_class < 1):
        ws = ui.workspace()
        with ui.store() as s:
            draw = draw_eval_set(s, ws.schema, per_class)
        st.toast(f"evaluation set: {draw.size} images ({len(draw.queued)} queued to label)"
                 if draw.added else f"the evaluation set already has {draw.size} images; it "
                                    "never shrinks")
        st.rerun()


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
                                step=10, help="Random training batch to label (0: none yet)")
        per_class = eval_per_class_input("demo")
        if ui.offer("ingest", "Create demo pool") and st.button(
                "Create demo pool", type="primary", icon=":material/auto_awesome:",
                disabled=ui.busy("demo")):
            if ui.start("demo", {"n": int(n), "size": int(size), "sample": int(first),
                                 "eval_per_class": int(per_class)}):
                st.rerun()
    with right.container(border=True):
        st.markdown("#### :material/folder_open: Ingest a folder or upload an archive")
        ingest_form("first")


def ingest_form(key: str) -> None:
    """Folder path or uploaded archive -> the ingest job (the same job at any time: duplicates
    are skipped by content hash, bad files reported as rejects)."""
    st.caption("JPEG/PNG crops in a folder, `.zip`, `.tar.gz` or `.tgz`. Bad files are "
               "reported as rejects; images already in the pool (same content) are skipped.")
    path = st.text_input("Folder or archive on this machine", key=f"ingest_path_{key}",
                         placeholder="/data/image_test.tar.gz")
    upload = st.file_uploader("…or upload an archive", type=["zip", "gz", "tgz"],
                              key=f"ingest_upload_{key}")
    if ui.offer("ingest", "Ingest") and st.button(
            "Ingest", icon=":material/download:", key=f"ingest_{key}",
            disabled=not (path or upload) or ui.busy("ingest")):
        target = ui.save_upload(upload) if upload is not None else path.strip()
        if ui.start("ingest", {"path": str(target)}):
            st.rerun()


def add_images() -> None:
    """Ingest more images into a pool that already has some (maintainers only)."""
    if not ui.may("ingest"):
        return
    with st.expander("Add images to the pool", icon=":material/add_photo_alternate:"):
        ingest_form("more")


def unfinished(open_rounds: list[BatchInfo]) -> None:
    """Rounds with images still to label, in the order the Label page serves them."""
    if not open_rounds:
        return
    st.markdown("##### Unfinished rounds")
    st.caption("The Label page opens the first one (the evaluation set first, then the oldest); "
               "\"then queue N\" after training waits until they are done.")
    st.dataframe(pd.DataFrame([{"round": b.number, "batch": batch_title(b),
                                "to label": b.pending, "of": b.total,
                                "done": b.done / b.total if b.total else 1.0}
                               for b in open_rounds]), hide_index=True, width="stretch",
                 column_config={"done": st.column_config.ProgressColumn(min_value=0,
                                                                        max_value=1)})


def pool_summary() -> None:
    with ui.store() as s:
        counts = s.status_counts()
        model = s.current_model()
        evaluation = eval_set_status(s, ui.workspace().schema)
        curve = learning_curve(s, same_set_only=evaluation.exists)
        others = len({r["model"] for r in learning_curve(s)}) - len({r["model"] for r in curve})
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
        evaluation_set(evaluation)
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
        st.markdown("##### Learning curve (accuracy on the evaluation set, per head)"
                    if evaluation.exists else "##### Learning curve (test accuracy per head)")
        if others > 0:
            st.caption(f"{others} model(s) left out: evaluated on an earlier state of the "
                       "evaluation set; `python -m core evaluate --model ID` re-measures one.")
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

    add_images()
    st.markdown("##### Rounds")
    rounds = counts["rounds"]
    if rounds:
        with ui.store() as s:
            infos = batches(s)
            open_rounds = unfinished_rounds(s, infos)
        info = {b.number: b for b in infos}
        unfinished(open_rounds)
        st.dataframe(pd.DataFrame([{**r, "done": info[r["number"]].done if r["number"] in info else None}
                                   for r in rounds]), hide_index=True, width="stretch")
    else:
        st.write("No labeling round yet: draw the evaluation set and a random first batch.")
        n = st.number_input("First batch size", min_value=1, value=min(100, counts["images"]))
        per_class = eval_per_class_input("sample")
        if ui.offer("sample", "Sample first batch") and st.button(
                "Sample first batch", icon=":material/casino:", disabled=ui.busy("sample")):
            if ui.start("sample", {"n": int(n), "eval_per_class": int(per_class)}):
                st.rerun()
    next_steps(counts, model)


def next_steps(counts: dict, model: dict | None) -> None:
    st.markdown("##### Next")
    cols = st.columns(4)
    with cols[0]:
        ui.link("views/1_Label.py", "Label the batch", ":material/label:")
    with cols[1]:
        ui.link("views/4_Train.py", "Retrain", ":material/model_training:")
    with cols[2]:
        ui.link("views/6_Queue.py", "Ranked queue", ":material/format_list_numbered:")
    with cols[3]:
        if counts["rounds"] and ui.may("simulate") and st.button(
                "Simulated annotator", icon=":material/smart_toy:", disabled=ui.busy("label_sim"),
                help="Demo pools only: label the open batches from the hidden ground truth"):
            if ui.start("label_sim", {}):
                st.rerun()


def audit_trail() -> None:
    """Who did what, newest first, filtered by person (labels, jobs, promotions, CVAT, users)."""
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


def suggestion_rates() -> None:
    """Automation bias made visible: how often annotators keep the model's suggestions
    (issue 13), per annotator and per suggested class, pre-selected vs hint."""
    with ui.store() as s:
        people = [r.row() for r in suggestion_stats.by_annotator(s)]
        classes = [r.row() for r in suggestion_stats.by_class(s)]
    if not people:
        return
    percent = {c: st.column_config.NumberColumn(c, format="%.0f %%")
               for c in ("acceptance", "override")}

    def table(rows: list[dict]) -> None:
        df = pd.DataFrame(rows)
        df[["acceptance", "override"]] *= 100
        st.dataframe(df, hide_index=True, width="stretch", column_config=percent)

    with st.expander("Model suggestions: acceptance and override rates",
                     icon=":material/smart_toy:"):
        st.caption("Per saved label and attribute: the model's answer was pre-selected (at or "
                   "above the pre-fill threshold) or shown as a hint; *accepted* = kept or "
                   "picked it, *changed* = chose another class, *unsure* = chose unsure. An "
                   "annotator who accepts nearly every pre-selection while the model is often "
                   "wrong is confirming, not labelling.")
        table(people)
        table(classes)
def team_progress() -> None:
    """Per-annotator progress and throughput (built-in annotator; see core/team_progress.py)."""
    with ui.store() as s:
        rows = annotator_progress(s)
    if not rows:
        return
    st.markdown("##### Team")
    st.caption("Images per hour of labelling time: gaps over 10 minutes between two saves count "
               "as breaks. Second labels are the independent double labels; reviews are "
               "decisions on the Review page.")
    st.dataframe(pd.DataFrame([
        {"annotator": p.annotator, "images": p.images, "second labels": p.second_labels,
         "reviews": p.reviews,
         "images / hour": None if p.images_per_hour is None else round(p.images_per_hour),
         "last hour": p.last_hour, "last active": ui.age_text(p.last_at),
         "per round": ", ".join(f"#{n}: {k}" for n, k in p.by_round.items())}
        for p in rows]), hide_index=True, width="stretch")


def body() -> None:
    ui.page("Overview")
    with ui.store() as s:
        empty = s.count_images() == 0
    if empty:
        onboarding()
    else:
        pool_summary()
        with ui.guard("The suggestion rates"):
            suggestion_rates()
    with ui.guard("The team's progress"):
        team_progress()
    with ui.guard("The audit trail"):
        audit_trail()


ui.run_page(body)
