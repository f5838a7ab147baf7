"""Export: parity-checked ONNX, int8 ONNX, the Jetson bundle; downloads and the latency table."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402
from core.export_files import export_dir, load_int8_report, load_parity, load_results  # noqa: E402
from models.export_files import FP32_NAME, INT8_NAME  # noqa: E402

from core.jobs import ACTIVE  # noqa: E402


def download_name(model_id: int, name: str) -> str:
    """The file name a download gets: it carries the model id, so two downloaded exports never
    overwrite or get mistaken for each other (``model.onnx`` -> ``cargroup_model_3.onnx``)."""
    if f"model_{model_id}" in name:  # the Jetson bundle is already cargroup_jetson_model_<id>.zip
        return name
    return f"cargroup_model_{model_id}{name.removeprefix('model')}"


def downloads(model_id: int) -> None:
    ws = ui.workspace()
    folder = export_dir(ws, model_id)
    files = [(FP32_NAME, "ONNX fp32"), (INT8_NAME, "ONNX int8")]
    files += [(p.name, "Jetson bundle") for p in sorted(folder.glob("*.zip"))] if folder.is_dir() else []
    present = [(name, title) for name, title in files if (folder / name).is_file()]
    if not present:
        st.caption(f"Nothing exported for model #{model_id} yet.")
        return
    cols = st.columns(len(present))
    for col, (name, title) in zip(cols, present):
        path = folder / name
        col.download_button(f"{title} ({path.stat().st_size / 1e6:.1f} MB)", path.read_bytes(),
                            file_name=download_name(model_id, name), key=f"dl_{name}", icon=":material/download:",
                            width="stretch")
    parity = load_parity(ws, model_id)
    if parity:
        st.markdown("##### Parity: PyTorch vs ONNX Runtime")
        st.dataframe(pd.DataFrame({"max |logit diff|": parity.get("max_abs_diff", {}),
                                   "argmax agreement": parity.get("argmax_agreement", {})}),
                     width="stretch")
    report = load_int8_report(ws, model_id)
    if report:
        st.markdown("##### int8 vs fp32 (labelled test images)")
        st.dataframe(pd.DataFrame({k: report[k] for k in ("n_labelled", "accuracy_fp32",
                                                          "accuracy_int8", "delta", "agreement")
                                   if k in report}), width="stretch")


def latency_table(model_id: int) -> None:
    rows = load_results(ui.workspace(), model_id)
    st.markdown("##### Latency")
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.caption("Tick *measure latency* above to time PyTorch, ONNX fp32 and int8 here.")


def body() -> None:
    ui.page("Export")
    with ui.store() as s:
        ui.require_images(s)
        models = s.models()
        current = s.current_model()
    if current is None:
        st.info("No trained model to export yet: train one on the Train page.",
                icon=":material/info:")
        return
    ids = [m["id"] for m in reversed(models)]
    model_id = st.selectbox("Model", ids, index=ids.index(current["id"]),
                            format_func=lambda i: f"model #{i}" + (" (current)" if i == current["id"] else ""))
    chosen = next(m for m in models if m["id"] == model_id)
    if (chosen.get("params") or {}).get("mirror_views"):
        st.caption(f"Model #{model_id} averages each image with its left-right mirror: two "
                   "backbone passes per image, about twice the latency of a single-pass model. "
                   "For the single-pass edge model, retrain with *Mirror views* off.")
    job = ui.job_panel("export", key="export")
    running = job is not None and job["status"] in ACTIVE
    with st.container(border=True):
        st.caption("ONNX is always built and published only when ONNX Runtime matches PyTorch "
                   "on real pool images.")
        cols = st.columns(3)
        int8 = cols[0].checkbox("int8 ONNX (CPU)", value=True)
        jetson = cols[1].checkbox("Jetson bundle (TensorRT FP16 build + runner)", value=True)
        latency = cols[2].checkbox("Measure latency", value=False)
        if ui.offer("export", "Build export") and st.button(
                "Build export", type="primary", icon=":material/deployed_code:",
                disabled=running or ui.busy("export")):
            if ui.start("export", {"model_id": int(model_id), "int8": int8, "jetson": jetson,
                                   "latency": latency}):
                st.rerun()
    with ui.guard("Export"):
        downloads(int(model_id))
    with ui.guard("The latency table"):
        latency_table(int(model_id))


ui.run_page(body)
