"""The sign-in gate that ``Home.py`` runs before any page.

Rules (see :mod:`core.access`): with accounts in the workspace everyone signs in, wherever the app
listens; without accounts the app is a single-user tool and only serves a loopback address (the
``python -m core app`` launcher refuses other addresses; this gate also stops a direct
``streamlit run`` on 0.0.0.0). A sign-in lasts ``session_minutes`` (workspace config.json).

Two ways to sign in, both ending in the same :class:`core.users.Session`:
- a workspace account's name and password (the form below);
- the team's identity provider through Streamlit's ``st.login`` (OIDC), when
  ``.streamlit/secrets.toml`` has an ``[auth]`` section: the provider vouches for the e-mail
  address, and the enabled workspace account of that name gives the role.
"""
from __future__ import annotations

import streamlit as st

import ui
from core.commands.app import is_loopback
from core.users import has_accounts, sign_in, sign_in_oidc
from data.accounts import SignInRefused


def oidc_configured() -> bool:
    """Streamlit sets ``st.user.is_logged_in`` (True or False) only where ``[auth]`` is set up."""
    return "is_logged_in" in st.user


def oidc_signed_in() -> bool:
    return bool(st.user.get("is_logged_in"))


def gate() -> None:
    """Return when the visitor may see pages; otherwise draw the sign-in form and stop."""
    ws = ui.workspace()
    if not has_accounts(ws):
        # None: started bare (`streamlit run`, AppTest) rather than by `python -m core app`,
        # which always passes the address and refuses non-loopback ones without accounts.
        address = st.get_option("server.address")
        if address is not None and not is_loopback(str(address)):
            st.error(f"This app listens on {address} but the workspace has no accounts; add one "
                     "with `python -m core users add NAME --role maintainer` and restart.",
                     icon=":material/lock:")
            st.stop()
        return
    session = st.session_state.get(ui.SESSION_KEY)
    if (session is None or session.expired()) and oidc_signed_in():
        try:  # the provider says who; the workspace account says what they may do
            session = st.session_state[ui.SESSION_KEY] = sign_in_oidc(ws, str(st.user.get("email")))
        except SignInRefused as exc:
            st.title("Car Grouping")
            st.error(str(exc), icon=":material/lock:")
            st.button("Sign out", icon=":material/logout:", key="oidc_sign_out", on_click=st.logout)
            st.stop()
    if session is not None and not session.expired():
        with st.sidebar:
            st.caption(f"Signed in as **{session.principal.user}** ({session.principal.role})")
            if st.button("Sign out", icon=":material/logout:", key="sign_out"):
                st.session_state.pop(ui.SESSION_KEY, None)
                if oidc_signed_in():
                    st.logout()
                st.rerun()
        return
    if session is not None:
        st.session_state.pop(ui.SESSION_KEY, None)
        st.info("Your session expired; sign in again.", icon=":material/schedule:")
    st.title("Car Grouping")
    if oidc_configured():
        st.button("Sign in with your organisation's account", type="primary",
                  icon=":material/badge:", key="oidc_sign_in", on_click=st.login)
        st.caption("…or with a workspace account:")
    with st.form("sign_in"):
        name = st.text_input("User name", key="signin_name")
        password = st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            st.session_state[ui.SESSION_KEY] = sign_in(ws, name, password)
        except SignInRefused as exc:
            st.error(str(exc), icon=":material/lock:")
        else:
            st.session_state.pop("signin_password", None)
            st.rerun()
    st.stop()
