"""Label: the built-in annotator. One queued image, three button groups with keyboard shortcuts,
the labelling guide beside them.

Speed: the image, the buttons and Save/Skip/Back are one fragment, so choosing a class or saving
reruns only that part (no full-page run per image); the next image's task is computed right after
the save and its pixels are prefetched into the cache while the annotator looks at this one.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.runtime.scriptrunner import get_script_run_ctx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import guide, labeling, refit_status as refit  # noqa: E402
from data.store import ImageRecord  # noqa: E402

# Keys per attribute, in class order. "C" and "R" are reserved by Streamlit.
KEYS = {
    "color": list("1234567890"),
    "type": list("QWETYUIO"),
    "orientation": list("ASDFGHJK"),
}
UNSURE_KEYS = {"color": "Z", "type": "X", "orientation": "V"}
DISPLAY_PX = 384
THUMB_PX = 56

S = st.session_state


def keys_for(attr: str, n: int, position: int) -> list[str | None]:
    keys = KEYS.get(attr, [])
    return [keys[i] if i < len(keys) else None for i in range(n)]


def choose(attr: str, value: str | None) -> None:
    # .get: a shortcut can land while the next image is being served (several annotators)
    S.label_choice = {**S.get("label_choice", {}), attr: value}
    S.label_touched = S.get("label_touched", set()) | {attr}
    S.pop("label_unsure_armed", None)


def rerun_fragment() -> None:
    """Rerun only the labeller; a full run when this is not a fragment rerun (AppTest, or a
    click that arrived with a change outside the fragment), where Streamlit refuses the scope."""
    ctx = get_script_run_ctx()
    if ctx is not None and ctx.fragment_ids_this_run:
        st.rerun(scope="fragment")
    st.rerun()


def thresholds() -> dict[str, float]:
    ws = ui.workspace()
    return labeling.prefill_thresholds(ws.config, ws.schema)


def load(image_id: int, batch: int) -> labeling.LabelTask:
    """Make ``image_id`` the current image and pre-select its saved label or the model's
    confident answers (hints for the rest)."""
    with ui.store() as s:
        task = labeling.task_for(s, image_id, batch, annotator=S.get("annotator", ""),
                                 thresholds=thresholds())
    S.label_image = image_id
    S.label_task = task
    S.label_choice = dict(task.suggestion)
    S.label_touched = set()
    S.pop("label_unsure_armed", None)
    return task


@st.cache_data(max_entries=32, show_spinner=False)
def display_image(root: str, image_id: int, _record: ImageRecord) -> np.ndarray:
    """The image scaled to the display size (cached: the next one is prefetched into it)."""
    image = labeling.load_display_image(ui.workspace(), _record)
    pil = Image.fromarray(np.asarray(image))
    scale = DISPLAY_PX / max(pil.size)  # keep the crop's aspect ratio
    big = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                     Image.NEAREST if scale >= 2 else Image.BICUBIC)
    return np.asarray(big)


def annotator_name() -> None:
    """Who labels: the signed-in user, else a typed name kept in the URL (?annotator=...) so a
    reload or a second tab with the same address keeps it."""
    signed_in = ui.principal()
    if signed_in is not None:  # identity comes from the sign-in, not from a typed name
        S.annotator = signed_in.user
    elif not S.get("annotator"):
        S.annotator = str(st.query_params.get("annotator", "")).strip()
    name = st.text_input("Annotator", value=S.annotator, placeholder="your name",
                         help="Recorded with every label you save; kept in the page address",
                         disabled=signed_in is not None)
    if name.strip() != S.annotator and S.annotator and S.get("label_image") is not None:
        # a corrected name: give the old name's claim back, so the image is served (and
        # claimed) again under the new one instead of being refused as someone else's
        with ui.store() as s:
            labeling.skip_image(s, S.label_image, annotator=S.annotator)
        S.label_image = None
        S.pop("label_task", None)
        S.pop("label_choice", None)
    S.annotator = name.strip()
    if signed_in is None:
        if S.annotator and st.query_params.get("annotator") != S.annotator:
            st.query_params["annotator"] = S.annotator
        elif not S.annotator and "annotator" in st.query_params:
            del st.query_params["annotator"]


def body() -> None:
    ui.page("Label")
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
        ui.link("views/0_Overview.py", "Overview", ":material/dashboard:")
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
    with top[1]:
        annotator_name()
    with top[2]:
        order_caption(batch)

    main, side = st.columns([3, 1])
    with main:
        labeller(batch)
    with side:
        with ui.guard("The labelling guide"):
            guide_panel()
        prefill_settings()


@st.fragment
def labeller(batch: int) -> None:
    """Image, buttons and actions: reruns alone on every choice and save (no full-page run)."""
    ws = ui.workspace()
    if "label_error" in S:
        ui.show_error(S.pop("label_error"))
    if "label_toast" in S:
        st.toast(S.pop("label_toast"))
    with ui.store() as s:
        info = labeling.batch_info(s, batch)
        current = S.get("label_image")
        if current is not None and s.round_rank(batch, current) is None:
            current = None  # the image belongs to another batch
        if current is None:
            current = labeling.next_image_id(s, batch, skip=S.label_skip, annotator=S.annotator,
                                             principal=ui.principal())  # claims what it serves
            if current is not None:
                load(current, batch)
    st.progress(info.done / max(info.total, 1),
                text=f"{info.done} of {info.total} images in round {batch} labelled")
    if current is None:
        with ui.store() as s:
            held = labeling.held_by_others(s, batch, S.annotator)
        if held:
            st.info(f"Nothing left for you in round {batch}: the remaining images are being "
                    "labelled by others right now.", icon=":material/group:")
            if st.button("Check again", icon=":material/refresh:"):
                rerun_fragment()
        else:
            st.success(f"Round {batch} is done: every image has a label.",
                       icon=":material/done_all:")
        if S.label_skip:
            if st.button(f"Show the {len(S.label_skip)} skipped images again"):
                S.label_skip = set()
                rerun_fragment()
        ui.link("views/4_Train.py", "Retrain with the new labels", ":material/model_training:")
        back_button()
        after_draw(batch)
        return
    task = S.get("label_task")
    if task is None or task.image.id != current or task.batch.number != batch:
        task = load(current, batch)

    left, right = st.columns([0.85, 2.15])
    with left:
        st.image(display_image(str(ws.root), task.image.id, task.image),
                 caption=f"#{task.position} of {info.total} · {task.image.name} · "
                         f"{task.image.split} split")
        if "label_clicked" in S:  # server time from the Save & next click to this image sent
            S.label_save_ms = (time.perf_counter() - S.pop("label_clicked")) * 1000
        if task.second_label:
            st.caption(":blue[Independent second label]: someone else labelled this image; "
                       "label it afresh (their answer is hidden; a reviewer settles differences).")
        if task.labelled_before:
            st.caption("Editing a saved label; saving adds a new version (history is kept).")
    with right:
        for attr in ws.schema.attributes:
            attribute_group(attr, list(ws.schema.classes[attr]), task)
    actions(task, batch)
    after_draw(batch, task.image.id)


def after_draw(batch: int, current: int | None = None) -> None:
    """Work that can wait until the image and buttons are on the screen: prefetch the next
    image's pixels, then ask for a head refit after a save (a new click interrupts both, which
    only means they happen after the next save)."""
    if current is not None:
        prefetch(batch, current)
    if S.pop("label_refit_pending", False):
        request_refit()


def attribute_group(attr: str, classes: list[str], task: labeling.LabelTask) -> None:
    chosen = S.label_choice.get(attr)
    pred = task.predictions.get(attr)
    touched = attr in S.label_touched
    from_model = attr in task.preselected_from_model and not touched
    head = f"**{attr.capitalize()}**"
    if from_model and chosen is not None and pred is not None:
        head += f" · :violet[pre-selected by the model: {pred[0]} ({pred[1]:.0%}), confirm or change]"
    elif pred is not None and not task.labelled_before and attr in task.hints:
        head += (f" · model guesses {pred[0]} ({pred[1]:.0%}): below the "
                 f"{task.thresholds.get(attr, labeling.DEFAULT_PREFILL_THRESHOLD):.0%} pre-fill "
                 "threshold, nothing pre-selected")
    elif pred is not None:
        head += f" · model says {pred[0]} ({pred[1]:.0%})"
    st.markdown(head)
    # unsure is shown as chosen only when it was chosen (now, or in the saved label): never a default
    unsure_chosen = chosen is None and (touched or task.labelled_before)
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
                           type="primary" if unsure_chosen else "tertiary",
                           shortcut=UNSURE_KEYS.get(attr), width="stretch",
                           help="Not visible / not sure: stored as missing. A choice, never a "
                                "default")


def actions(task: labeling.LabelTask, batch: int) -> None:
    schema = ui.workspace().schema
    st.divider()
    armed = S.get("label_unsure_armed") == task.image.id
    if armed:
        st.warning("Nothing is chosen for this image. Press **Save & next** again to store it as "
                   "*all unsure* (not trained on), or **Skip** it.", icon=":material/help:")
    cols = st.columns([2.5, 1.4, 1.7, 2.4])
    no_name = not S.annotator
    # callbacks: they run before the fragment's rerun, which then draws the next image directly
    cols[0].button("Save & next", type="primary", shortcut="Enter", icon=":material/check:",
                   disabled=no_name, width="stretch", on_click=save_and_next, args=(task, batch))
    cols[1].button("Skip", shortcut="N", icon=":material/skip_next:", width="stretch",
                   on_click=skip, args=(task, batch))
    with cols[2]:
        back_button()
    if no_name:
        cols[3].warning("Enter your name as annotator to save labels.", icon=":material/person:")
    else:
        cols[3].caption("Keys: color 1–0 · type Q W E T Y U I O · orientation A S D F G H J K · "
                        "unsure Z / X / V · Enter save · N skip · Backspace back"
                        + (f" · last save & next {S.label_save_ms:.0f} ms (server)"
                           if "label_save_ms" in S else ""))


def save_and_next(task: labeling.LabelTask, batch: int) -> None:
    """Save the choices and hand out the next image (a callback: no extra script run).

    On a fresh image with nothing chosen the first press only arms the confirmation; a second
    press (or choosing unsure for every attribute, key by key) stores an all-unsure label.
    """
    if task.image.id != S.get("label_image"):
        return  # a second Enter that left before the next image was drawn: already saved
    S.label_clicked = time.perf_counter()
    schema = ui.workspace().schema
    choice = dict(S.label_choice)
    armed = S.get("label_unsure_armed") == task.image.id
    explicit = all(a in S.label_touched for a in schema.attributes)
    if labeling.needs_all_unsure_confirmation(task, choice) and not (explicit or armed):
        S.label_unsure_armed = task.image.id
        S.pop("label_clicked", None)
        return
    try:
        with ui.store() as s:
            labeling.save_label(s, schema, task.image.id, choice, annotator=S.annotator,
                                round_id=task.batch.round_id, principal=ui.principal(),
                                suggestions=task.suggestions, confirm_all_unsure=True)
    except Exception as exc:  # noqa: BLE001 - shown by the fragment as one readable line
        S.label_error = exc
        S.pop("label_clicked", None)
        return
    saved = {a: v for a, v in choice.items() if v}
    S.label_history = [*S.label_history, (task.image.id, task.batch.number)]
    S.label_skip = S.label_skip - {task.image.id}
    go_next(batch)
    S.label_refit_pending = True
    S.label_toast = (f"Saved {task.image.name}: "
                     + (", ".join(f"{a}={v}" for a, v in saved.items()) or "all unsure"))


def skip(task: labeling.LabelTask, batch: int) -> None:
    if task.image.id != S.get("label_image"):
        return  # a stale click: that image was already saved or skipped
    try:
        with ui.store() as s:  # give the image back to the others
            labeling.skip_image(s, task.image.id, annotator=S.annotator, principal=ui.principal())
    except Exception as exc:  # noqa: BLE001 - shown by the fragment as one readable line
        S.label_error = exc
        return
    S.label_skip = S.label_skip | {task.image.id}
    go_next(batch)


def go_next(batch: int) -> None:
    """Hand out the next image now, so the rerun only draws it (the task is already built)."""
    with ui.store() as s:
        nxt = labeling.next_image_id(s, batch, skip=S.label_skip, annotator=S.annotator,
                                     principal=ui.principal())  # claims what it serves
    if nxt is None:
        S.label_image = None
        S.pop("label_task", None)
        S.pop("label_choice", None)
    else:
        load(nxt, batch)


def prefetch(batch: int, current: int) -> None:
    """Warm the pixel cache with the image that will most likely come next."""
    try:
        with ui.store() as s:
            upcoming = labeling.upcoming_ids(s, batch, skip=S.label_skip | {current})
            records = s.images(ids=upcoming)
        for record in records:
            display_image(str(ui.workspace().root), record.id, record)
    except Exception:  # noqa: BLE001 - a missed prefetch only costs time on the next image
        ui.log.exception("could not prefetch the next image")


def order_caption(batch: int) -> None:
    """Where this batch's order comes from, and whether a head refit is re-ranking it now."""
    text = refit.ranking_source(ui.workspace(), batch)
    with ui.store() as s:
        if ui.active_jobs(s, kind="refit"):
            text += " · refitting the heads on the new labels…"
    st.caption(f"Order: {text}")


def request_refit() -> None:
    """After a save: refit the heads in the background when enough new labels arrived.

    Never in the annotator's way: a busy or failed refit only means the order is refreshed later.
    """
    try:
        refit.request_refit(ui.workspace(), principal=ui.principal())
    except Exception:  # noqa: BLE001 - labelling goes on; the Queue page shows the job's error
        ui.log.exception("could not start the head refit")


def back_button() -> None:
    if st.button("Back", shortcut="Backspace", icon=":material/undo:",
                 disabled=not S.get("label_history"), width="stretch",
                 help="Return to the image you saved last and change its label"):
        image_id, batch = S.label_history[-1]
        S.label_history = S.label_history[:-1]
        load(image_id, batch)
        if batch != S.get("label_batch"):
            S.label_batch_next = batch  # applied before the selectbox is drawn
            st.rerun()
        rerun_fragment()


# -- the labelling guide -------------------------------------------------------------------------
@st.cache_data(ttl=120, max_entries=16, show_spinner=False)
def references(root: str, attribute: str) -> dict[str, list[guide.Reference]]:
    """Reference thumbnails per class (cached: they change only as labels accumulate)."""
    ws = ui.workspace()
    with ws.store() as s:
        return guide.class_references(s, ws, attribute, per_class=3, size=THUMB_PX)


@st.cache_data(max_entries=4, show_spinner=False)
def drawings(root: str) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    schema = ui.workspace().schema
    return guide.orientation_pictures(schema, size=72), guide.type_silhouettes(schema, size=72)


def guide_panel() -> None:
    ws = ui.workspace()
    path = guide.ensure_guide(ws)
    sections = guide.guide_sections(path.read_text(encoding="utf-8"))
    orientations, silhouettes = drawings(str(ws.root))
    with st.expander("Labelling guide", icon=":material/menu_book:"):
        st.caption(f"The text comes from `{path}`: edit that file to change it for everyone.")
        if sections.get(""):
            st.caption(sections[""].removeprefix("# Labelling guide").strip())
        tabs = st.tabs([a.capitalize() for a in ws.schema.attributes])
        for attr, tab in zip(ws.schema.attributes, tabs):
            with tab:
                st.markdown(sections.get(attr.lower(), "") or f"*(no `## {attr}` section)*")
                if attr == ws.schema.flip_attribute and orientations:
                    st.markdown("**The eight views** (demo drawings)")
                    st.image([img for _, img in orientations],
                             caption=[name for name, _ in orientations], width=72)
                if attr == "type" and silhouettes:
                    st.markdown("**Silhouettes** (side view, nose to the left)")
                    st.image([img for _, img in silhouettes],
                             caption=[name for name, _ in silhouettes], width=72)
                st.markdown("**Examples per class** (newest labelled images, else a demo drawing)")
                for value, refs in references(str(ws.root), attr).items():
                    if refs:
                        st.image([r.image for r in refs], caption=[value] * len(refs),
                                 width=THUMB_PX)
                    else:
                        st.caption(f"{value}: no example yet")


def prefill_settings() -> None:
    """Per-head pre-fill thresholds (maintainers): pre-select the model's answer only above them."""
    if not ui.may("configure_labelling"):
        return
    current = thresholds()
    with st.expander("Pre-fill settings", icon=":material/tune:"):
        st.caption("The model's answer is pre-selected only when its probability is at least the "
                   "head's threshold; below it the page shows it as a hint. 1.0: hints only.")
        new = {attr: st.number_input(f"{attr} threshold", min_value=0.0, max_value=1.0,
                                     value=float(value), step=0.05, key=f"prefill_{attr}")
               for attr, value in current.items()}
        if st.button("Save thresholds", icon=":material/save:", disabled=new == current):
            labeling.set_prefill_thresholds(ui.workspace(), new, principal=ui.principal())
            S.pop("label_task", None)  # redraw the current image with the new thresholds
            st.rerun()


ui.run_page(body)
