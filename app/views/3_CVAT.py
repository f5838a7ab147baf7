"""CVAT: connection status, push a batch as a task, task/job progress, pull; the manual route."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import cvat_config, labeling  # noqa: E402
from cvat_bridge import records, service  # noqa: E402
from cvat_bridge.settings import SettingsError  # noqa: E402
from data.datumaro_io import import_datumaro  # noqa: E402

S = st.session_state


def connection() -> bool:
    """Show whether CVAT is configured/reachable; returns True when settings exist."""
    ws = ui.workspace()
    st.subheader("Connection")
    try:
        facts = cvat_config.summary(ws)
    except SettingsError as exc:
        st.info(f"{exc}", icon=":material/cloud_off:")
        st.caption("Set the variables in the shell that starts the app, or write `cvat.json` "
                   "(mode 600) in the workspace: `{\"host\": \"https://cvat.example.org\", "
                   "\"access_token\": \"...\"}`. The manual route below works without a server.")
        settings_form()
        return False
    # Host, user and whether a secret is set: never the secret, nor where it is kept.
    st.write(f"Configured: `{facts.host}` · user `{facts.username or '(token)'}` · "
             f"{facts.auth_kind} {'set' if facts.secret_set else 'NOT set'}")
    settings_form()
    if st.button("Check connection", icon=":material/network_check:"):
        with st.spinner("Contacting CVAT…"):
            S.cvat_check = service.check(ws).lines()
    for line in S.get("cvat_check", []):
        (st.warning if "DIFFERS" in line or line.startswith("warning") else st.write)(line)
    return True


def settings_form() -> None:
    """Maintainers may point the bridge at a server; the form never shows a stored secret."""
    if not ui.offer("configure_cvat", "Changing the CVAT connection"):
        return
    with st.expander("Change the CVAT connection", icon=":material/settings:"):
        with st.form("cvat_settings", clear_on_submit=True):
            host = st.text_input("Host", placeholder="https://cvat.example.org")
            user = st.text_input("User name (with a password)")
            password = st.text_input("Password", type="password")
            token = st.text_input("Access token (instead of user and password)", type="password")
            saved = st.form_submit_button("Save to the workspace (mode 600)")
        if saved:
            with ui.guard("Saving the CVAT settings"):
                cvat_config.save_settings(ui.workspace(), host=host, username=user,
                                          password=password, access_token=token,
                                          principal=ui.principal())
                st.success("CVAT settings saved.")


def push_and_pull(batches: list[labeling.BatchInfo]) -> None:
    st.subheader("Push a batch as a task")
    ui.job_panel(("cvat_push", "cvat_pull"), key="cvat")
    cols = st.columns([2, 1, 1, 1])
    numbers = [b.number for b in reversed(batches)]
    number = cols[0].selectbox("Batch", numbers, key="cvat_push_round",
                               format_func=lambda n: f"round {n}")
    segment = cols[1].number_input("Images per job", 0, 10000, 0,
                                   help="Split the task into jobs for several annotators (0: one job)")
    prefill = cols[2].checkbox("Pre-fill predictions", help="Annotators correct the model's tags")
    force = cols[3].checkbox("Push again", help="Create another task for an already pushed batch")
    if ui.offer("cvat_push", "Push to CVAT") and st.button(
            "Push to CVAT", type="primary", icon=":material/cloud_upload:",
            disabled=ui.busy("cvat_push")):
        if ui.start("cvat_push", {"round_number": int(number), "segment_size": int(segment) or None,
                                  "prefill": bool(prefill), "force": bool(force)}):
            st.rerun()

    st.subheader("Tasks")
    with ui.store() as s:
        known = records.tasks(s)
    if not known:
        st.caption("No task pushed from this workspace yet.")
        return
    if st.button("Refresh progress from CVAT", icon=":material/refresh:"):
        with st.spinner("Reading task and job states…"):
            S.cvat_status = [
                {"task": t.task_id, "round": t.round_number, "name": t.name,
                 "tagged": t.tagged, "size": t.size, "progress": t.progress,
                 "jobs": ", ".join(f"#{j.id} {j.state}/{j.stage} {j.tagged}/{j.frames}"
                                   for j in t.jobs) if t.exists else "deleted on the server"}
                for t in service.status(ws=ui.workspace())]
    rows = S.get("cvat_status") or [{"task": t.task_id, "round": t.round_number, "name": t.name,
                                     "size": t.size, "host": t.host} for t in known]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn(min_value=0, max_value=1)})
    if ui.offer("cvat_pull", "Pull labels from CVAT") and st.button(
            "Pull labels from CVAT", icon=":material/cloud_download:",
            disabled=ui.busy("cvat_pull"),
            help="Exports each task as Datumaro 1.0 and imports its tags; re-pulling "
                 "adds nothing new"):
        if ui.start("cvat_pull", {}):
            st.rerun()


def manual(batches: list[labeling.BatchInfo]) -> None:
    ws = ui.workspace()
    st.subheader("Manual route")
    left, right = st.columns(2)
    with left.container(border=True):
        st.markdown("**Export a batch for manual upload to CVAT**")
        if batches:
            numbers = [b.number for b in reversed(batches)]
            number = st.selectbox("Batch", numbers, key="cvat_manual_round",
                                  format_func=lambda n: f"round {n}")
            if ui.offer("cvat_push", "Build zip") and st.button("Build zip",
                                                                icon=":material/folder_zip:"):
                out = ws.exports_dir / f"cvat_round_{number}.zip"
                with st.spinner("Writing images and the label-spec README…"):
                    result = service.export_round(ws, int(number), out)
                S.cvat_zip = str(result.path)
                st.success(result.summary())
            if S.get("cvat_zip") and Path(S.cvat_zip).is_file():
                st.download_button("Download zip", Path(S.cvat_zip).read_bytes(),
                                   file_name=Path(S.cvat_zip).name, mime="application/zip",
                                   icon=":material/download:")
        else:
            st.caption("No batch yet.")
    with right.container(border=True):
        st.markdown("**Import a Datumaro export** (`.zip` or `default.json`)")
        upload = st.file_uploader("Datumaro export", type=["zip", "json"],
                                  label_visibility="collapsed")
        if ui.offer("cvat_pull", "Import labels") and st.button(
                "Import labels", disabled=upload is None, icon=":material/upload:"):
            path = ui.save_upload(upload, "imports")
            with st.spinner("Importing…"):
                report = import_datumaro(ws, path)
            st.success(f"{upload.name}: {report.summary()}")
            for line in report.details():
                st.caption(line)


def body() -> None:
    ui.page("CVAT")
    with ui.store() as s:
        ui.require_images(s)
        batches = labeling.batches(s)
    with ui.guard("The CVAT bridge"):
        if connection() and batches:
            push_and_pull(batches)
        elif not batches:
            st.info("No batch to push yet: sample or rank one first.")
    with ui.guard("The manual CVAT route"):
        manual(batches)


ui.run_page(body)
