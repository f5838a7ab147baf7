"""Label: the built-in annotator. One queued image, three button groups with keyboard shortcuts."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import labeling, refit_status as refit  # noqa: E402

# Keys per attribute, in class order. "C" and "R" are reserved by Streamlit.
KEYS = {
    "color": list("1234567890"),
    "type": list("QWETYUIO"),
    "orientation": list("ASDFGHJK"),
}
UNSURE_KEYS = {"color": "Z", "type": "X", "orientation": "V"}
DISPLAY_PX = 384

S = st.session_state


def keys_for(attr: str, n: int, position: int) -> list[str | None]:
    keys = KEYS.get(attr, [])
    return [keys[i] if i < len(keys) else None for i in range(n)]


def choose(attr: str, value: str | None) -> None:
    # .get: a shortcut can land while the next image is being served (several annotators)
    S.label_choice = {**S.get("label_choice", {}), attr: value}
    S.label_touched = S.get("label_touched", set()) | {attr}


def load(image_id: int, batch: int) -> None:
    """Make ``image_id`` the current image and pre-select its saved label or the prediction."""
    with ui.store() as s:
        task = labeling.task_for(s, image_id, batch, annotator=S.get("annotator", ""))
    S.label_image = image_id
    S.label_choice = dict(task.suggestion)
    S.label_touched = set()


def body() -> None:
    ui.page("Label")
    ws = ui.workspace()
    schema = ws.schema
    S.setdefault("label_history", [])
    S.setdefault("label_skip", set())
    S.setdefault("label_touched", set())
    S.setdefault("annotator", "")

    with ui.store() as s:
        ui.require_images(s)
        infos = labeling.batches(s, principal=ui.principal())  # rounds open to this person
        default = labeling.default_batch(s, infos)
    if not infos:
        st.info("Nothing queued yet. Sample a first batch on the Overview page or rank a queue "
                "on the Queue page.", icon=":material/info:")
        ui.link("pages/0_Overview.py", "Overview", ":material/dashboard:")
        return

    top = st.columns([2, 2, 3])
    numbers = [b.number for b in infos]
    if S.get("label_batch_next") in numbers:
        S.label_batch = S.pop("label_batch_next")
    if S.get("label_batch") not in numbers:
        S.label_batch = default.number if default else numbers[-1]
    by_number = {b.number: b for b in infos}
    batch = top[0].selectbox(
        "Batch", numbers, key="label_batch",
        format_func=lambda n: f"round {n} ({labeling.batch_title(by_number[n])}) · "
                              f"{by_number[n].pending} to do")
    signed_in = ui.principal()
    if signed_in is not None:  # identity comes from the sign-in, not from a typed name
        S.annotator = signed_in.user
    name = top[1].text_input("Annotator", value=S.annotator, placeholder="your name",
                             help="Recorded with every label you save",
                             disabled=signed_in is not None)
    S.annotator = name.strip()
    info = by_number[batch]
    top[2].progress(info.done / max(info.total, 1),
                    text=f"{info.done} of {info.total} images in round {batch} labelled")
    order_caption(ws, batch)

    # Which image: the one being edited, else the next unlabelled one in rank order.
    current = S.get("label_image")
    with ui.store() as s:
        batch_ids = {it["image_id"] for it in s.round_items(batch)}
        if current not in batch_ids:
            current = labeling.next_image_id(s, batch, skip=S.label_skip, annotator=S.annotator,
                                             principal=ui.principal())  # claims what it serves
            if current is not None:
                load(current, batch)
        if current is None:
            if labeling.held_by_others(s, batch, S.annotator):
                st.info(f"Nothing left for you in round {batch}: the remaining images are being "
                        "labelled by others right now.", icon=":material/group:")
                if st.button("Check again", icon=":material/refresh:"):
                    st.rerun()
            else:
                st.success(f"Round {batch} is done: every image has a label.",
                           icon=":material/done_all:")
            if S.label_skip:
                if st.button(f"Show the {len(S.label_skip)} skipped images again"):
                    S.label_skip = set()
                    st.rerun()
            ui.link("pages/4_Train.py", "Retrain with the new labels", ":material/model_training:")
            back_button()
            return
        task = labeling.task_for(s, current, batch, annotator=S.annotator)
    if "label_choice" not in S:
        load(current, batch)

    left, right = st.columns([1, 2])
    with left:
        image = labeling.load_display_image(ws, task.image)
        pil = Image.fromarray(np.asarray(image))
        scale = DISPLAY_PX / max(pil.size)  # keep the crop's aspect ratio
        big = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                         Image.NEAREST if scale >= 2 else Image.BICUBIC)
        st.image(big, caption=f"#{task.position} of {info.total} · {task.image.name} · "
                              f"{task.image.split} split")
        if task.second_label:
            st.caption(":blue[Independent second label]: someone else labelled this image; "
                       "label it afresh (their answer is hidden; a reviewer settles differences).")
        if task.labelled_before:
            st.caption("Editing a saved label; saving adds a new version (history is kept).")
    with right:
        for attr in schema.attributes:
            attribute_group(attr, list(schema.classes[attr]), task)
    actions(task, schema)


def attribute_group(attr: str, classes: list[str], task: labeling.LabelTask) -> None:
    chosen = S.label_choice.get(attr)
    pred = task.predictions.get(attr)
    from_model = attr in task.preselected_from_model and attr not in S.label_touched
    head = f"**{attr.capitalize()}**"
    if from_model and chosen is not None and pred is not None:
        head += f" · :violet[pre-selected by the model: {pred[0]} ({pred[1]:.0%}), confirm or change]"
    elif pred is not None:
        head += f" · model says {pred[0]} ({pred[1]:.0%})"
    st.markdown(head)
    keys = keys_for(attr, len(classes), 0)
    per_row = 4
    for start in range(0, len(classes) + 1, per_row):
        row = st.columns(per_row)
        for j, col in enumerate(row):
            i = start + j
            if i < len(classes):
                value = classes[i]
                is_model = from_model and value == chosen
                col.button(value, key=f"btn_{attr}_{value}", on_click=choose, args=(attr, value),
                           type="primary" if value == chosen else "secondary",
                           shortcut=keys[i], width="stretch",
                           icon=":material/smart_toy:" if is_model else None,
                           help="model prediction" if is_model else None)
            elif i == len(classes):
                col.button("unsure", key=f"btn_{attr}__unsure", on_click=choose, args=(attr, None),
                           type="primary" if chosen is None else "tertiary",
                           shortcut=UNSURE_KEYS.get(attr), width="stretch",
                           help="Not visible / not sure: stored as missing")


def actions(task: labeling.LabelTask, schema) -> None:
    st.divider()
    cols = st.columns([2, 1.4, 1.4, 3])
    no_name = not S.annotator
    if cols[0].button("Save & next", type="primary", shortcut="Enter", icon=":material/check:",
                      disabled=no_name, width="stretch"):
        with ui.store() as s:
            labeling.save_label(s, schema, task.image.id, S.label_choice, annotator=S.annotator,
                                round_id=task.batch.round_id, principal=ui.principal())
        saved = {a: v for a, v in S.label_choice.items() if v}
        S.label_history = [*S.label_history, (task.image.id, task.batch.number)]
        S.label_skip = S.label_skip - {task.image.id}
        S.label_image = None
        S.pop("label_choice", None)
        request_refit()
        st.toast(f"Saved {task.image.name}: "
                 + (", ".join(f"{a}={v}" for a, v in saved.items()) or "all unsure"))
        st.rerun()
    if cols[1].button("Skip", shortcut="N", icon=":material/skip_next:", width="stretch"):
        with ui.store() as s:  # give the image back to the others
            labeling.skip_image(s, task.image.id, annotator=S.annotator, principal=ui.principal())
        S.label_skip = S.label_skip | {task.image.id}
        S.label_image = None
        S.pop("label_choice", None)
        st.rerun()
    with cols[2]:
        back_button()
    if no_name:
        cols[3].warning("Enter your name as annotator to save labels.", icon=":material/person:")
    else:
        cols[3].caption("Keys: color 1–0 · type Q W E T Y U I O · orientation A S D F G H J K · "
                        "unsure Z / X / V · Enter save · N skip · Backspace back")


def order_caption(ws, batch: int) -> None:
    """Where this batch's order comes from, and whether a head refit is re-ranking it now."""
    text = refit.ranking_source(ws, batch)
    with ui.store() as s:
        if ui.active_jobs(s, kind="refit"):
            text += " · refitting the heads on the new labels…"
    st.caption(f"Order: {text}")


def request_refit() -> None:
    """After a save: refit the heads in the background when enough new labels arrived.

    Never in the annotator's way: a busy or failed refit only means the order is refreshed later.
    """
    try:
        refit.request_refit(ui.workspace())
    except Exception:  # noqa: BLE001 - labelling goes on; the Queue page shows the job's error
        ui.log.exception("could not start the head refit")


def back_button() -> None:
    if st.button("Back", shortcut="Backspace", icon=":material/undo:",
                 disabled=not S.get("label_history"), width="stretch",
                 help="Return to the image you saved last and change its label"):
        image_id, batch = S.label_history[-1]
        S.label_history = S.label_history[:-1]
        S.label_batch_next = batch  # applied before the selectbox is drawn
        load(image_id, batch)
        st.rerun()


ui.run_page(body)
