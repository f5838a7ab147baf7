"""Review: settle the disagreements of double-labelled images; agreement between annotators;
the team settings (double-labelled share, claim expiry, rounds handed to annotators)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ui  # noqa: E402

from core import labeling  # noqa: E402
from core.agreement import AgreementReport, agreement, double_pairs  # noqa: E402
from core.assignment import all_assignees, assign_round  # noqa: E402
from core.claims import claim_minutes, live_claims, set_claim_minutes  # noqa: E402
from core.double import double_share, set_double_share  # noqa: E402
from core.review import ReviewItem, decide, review_queue  # noqa: E402
from data.accounts import list_users  # noqa: E402

UNSURE = "\u2205 unsure"  # a radio option for "not visible / not sure" (stored as missing)
DISPLAY_PX = 320
S = st.session_state


def body() -> None:
    ui.page("Review")
    ws = ui.workspace()
    with ui.store() as s:
        ui.require_images(s)
        pairs = double_pairs(s)
        queue = review_queue(s, ws.schema, pairs)
        report = agreement(s, ws.schema, pairs)
        share = double_share(s)
    settled = sum(1 for p in pairs if p.decision is not None)
    st.caption(f"{share:.0%} of each round is labelled twice, by two annotators who do not see "
               "each other's answer. Where they differ, a reviewer's decision becomes the label; "
               "both answers stay in the history.")
    c = st.columns(3)
    c[0].metric("Double-labelled images", len(pairs))
    c[1].metric("Disagreements to review", len(queue))
    c[2].metric("Settled by review", settled)

    if queue and ui.may("review"):
        decision_form(queue[0], len(queue))
    elif queue:
        st.warning(f"{len(queue)} disagreement(s) wait for a reviewer: settling them needs the "
                   "reviewer or maintainer role.", icon=":material/lock:")
    elif pairs:
        st.success("No disagreements to review.", icon=":material/done_all:")
    else:
        st.info("Nothing to review yet: disagreements appear here once two annotators have "
                "labelled the same image (sign in as two people and label a round).",
                icon=":material/info:")
        ui.link("views/1_Label.py", "Label", ":material/label:")
    agreement_tables(report)
    if ui.may("configure_team"):
        with ui.guard("Team settings"):
            team_settings()


def decision_form(item: ReviewItem, open_count: int) -> None:
    """The oldest disagreement: the image, both answers, one choice per differing attribute."""
    ws = ui.workspace()
    pair = item.pair
    a, b = pair.annotators
    with ui.store() as s:
        image = s.image(item.image_id)
    st.subheader(f"Settle: {image.name}")
    left, right = st.columns([1, 2])
    with left:
        pil = Image.fromarray(np.asarray(labeling.load_display_image(ws, image)))
        scale = DISPLAY_PX / max(pil.size)
        st.image(pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                            Image.NEAREST if scale >= 2 else Image.BICUBIC),
                 caption=f"{image.name} · labelled by {a} and {b} · 1 of {open_count} to review")
    choices: dict[str, str | None] = {}
    missing = []
    with right:
        for attr in ws.schema.attributes:
            first, second = pair.first.values.get(attr), pair.second.values.get(attr)
            if attr not in item.attributes:
                choices[attr] = first
                st.markdown(f"**{attr.capitalize()}**: {first or 'unsure'} · both agree")
                continue
            answers = [v if v is not None else UNSURE for v in (first, second)]
            options = list(dict.fromkeys(
                [*answers, *ws.schema.classes[attr], UNSURE]))
            said = {answers[0]: a, answers[1]: b}

            def fmt(value: str, said: dict[str, str] = said) -> str:
                return f"{value} ({said[value]})" if value in said else value

            picked = st.radio(f"**{attr.capitalize()}**: {a} said {answers[0]}, {b} said "
                              f"{answers[1]}", options, index=None, horizontal=True,
                              format_func=fmt, key=f"review_{item.image_id}_{attr}")
            if picked is None:
                missing.append(attr)
            choices[attr] = None if picked == UNSURE else picked
        if st.button("Save decision", type="primary", icon=":material/gavel:",
                     disabled=bool(missing),
                     help="Pick an answer for every attribute the two disagree on"
                     if missing else "The decision becomes the image's label"):
            with ui.store() as s:
                decide(s, ws.schema, item.image_id, choices, principal=ui.principal())
            st.toast(f"Decided {image.name}: " + ", ".join(
                f"{k}={v or 'unsure'}" for k, v in choices.items()))
            st.rerun()
        if missing:
            st.caption("Choose an answer for: " + ", ".join(missing))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _kappa(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def agreement_tables(report: AgreementReport) -> None:
    st.markdown("##### Agreement between annotators")
    if not report.images:
        st.caption("Appears once double-labelled images have both labels.")
        return
    st.caption(f"{report.images} double-labelled images, {report.disagreements} with a "
               "disagreement. Kappa discounts the agreement two people reach by chance "
               "(1: perfect, 0: chance); — where it is undefined (one class throughout). "
               "An attribute either marked unsure is left out.")
    st.dataframe(pd.DataFrame([
        {"attribute": r.attribute, "images": r.n, "agreement": _pct(r.agreement),
         "Cohen's kappa": _kappa(r.kappa)} for r in report.overall]),
        hide_index=True, width="stretch")
    left, right = st.columns(2)
    with left:
        st.markdown("**Per annotator pair**")
        st.dataframe(pd.DataFrame([
            {"pair": " & ".join(r.annotators or ()), "attribute": r.attribute, "images": r.n,
             "agreement": _pct(r.agreement), "kappa": _kappa(r.kappa)} for r in report.pairs]),
            hide_index=True, width="stretch")
    with right:
        st.markdown("**Per class** (this class against the rest)")
        st.dataframe(pd.DataFrame([
            {"attribute": r.attribute, "class": r.value, "images": r.n,
             "specific agreement": _pct(r.agreement), "kappa": _kappa(r.kappa)}
            for r in report.classes]), hide_index=True, width="stretch")


def team_settings() -> None:
    """Maintainers: the double-labelled share, the claim expiry, who labels which round."""
    with st.expander("Team settings: double labelling, claims, rounds handed out",
                     icon=":material/groups:"):
        with ui.store() as s:
            share, minutes = double_share(s), claim_minutes(s)
            rounds = s.rounds()
            handed = all_assignees(s)
            claims = live_claims(s)
            people = [u.name for u in list_users(s) if not u.disabled]
        cols = st.columns(3)
        new_share = cols[0].number_input(
            "Double-labelled share (%)", min_value=0, max_value=100, value=round(share * 100),
            step=5, help="Share of each new round that a second annotator labels independently")
        new_minutes = cols[1].number_input(
            "Claim expiry (minutes)", min_value=1, max_value=24 * 60, value=round(minutes),
            help="An image served to someone is theirs this long, then free again")
        if cols[2].button("Save settings", icon=":material/save:"):
            with ui.store() as s:
                set_double_share(s, new_share / 100, principal=ui.principal())
                set_claim_minutes(s, new_minutes, principal=ui.principal())
            st.toast("Team settings saved")
            st.rerun()
        if not rounds:
            return
        by_round = {}
        for c in claims:
            by_round[c.round_id] = by_round.get(c.round_id, 0) + 1
        st.dataframe(pd.DataFrame([
            {"round": r["number"], "kind": r["kind"], "images": r["size"],
             "handed to": ", ".join(handed.get(r["id"], [])) or "everyone (open)",
             "being labelled now": by_round.get(r["id"], 0)} for r in rounds]),
            hide_index=True, width="stretch")
        if not people:
            st.caption("Rounds can be handed to named people once the workspace has accounts "
                       "(`python -m core users add NAME`).")
            return
        cols = st.columns([1, 3, 1])
        number = cols[0].selectbox("Round", [r["number"] for r in rounds], index=len(rounds) - 1,
                                   key="assign_round")
        current = handed.get(next(r["id"] for r in rounds if r["number"] == number), [])
        names = cols[1].multiselect("Hand to (none: open to everyone)", people,
                                    default=[n for n in current if n in people],
                                    key=f"assign_people_{number}")
        if cols[2].button("Hand out", icon=":material/assignment_ind:"):
            with ui.store() as s:
                assign_round(s, number, names, principal=ui.principal())
            st.toast(f"Round {number}: " + (", ".join(names) or "open to everyone"))
            st.rerun()


ui.run_page(body)
