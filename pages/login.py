"""Log in; on a fresh installation (no accounts yet) create the first admin account."""

from __future__ import annotations

import time

import streamlit as st

from pages._common import attempt, get_store, md, session_ended_message, start_session
from phenotyping.auth import (MIN_PASSWORD_LENGTH, AuthError, LoginPolicy, authenticate, create_first_admin,
                              oidc_links, oidc_username, record_login)

store = get_store()
st.title("Leukocyte review")
st.caption("Label-free white-blood-cell phenotyping — research use, not clinically validated.")
PASSWORD_HELP = (f"At least {MIN_PASSWORD_LENGTH} characters, not a common password, not built on your name; "
                 "three or four unrelated words work well")
#: This browser session's failed logins in a row and the time of the last one (whatever usernames they named).
_FAILS, _LAST_FAIL = "_login_failures", "_login_last_failed"


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all: OIDC is simply not configured
        return False


def _session_wait() -> float:
    """Seconds this session must still wait before its next attempt (the store throttles per username too)."""
    failures = int(st.session_state.get(_FAILS, 0))
    wait = LoginPolicy.from_settings().wait_after(failures).total_seconds()
    return max(0.0, float(st.session_state.get(_LAST_FAIL, 0.0)) + wait - time.time())


def _log_in(username: str, password: str) -> None:
    wait = _session_wait()
    if wait > 0:
        st.error(f"Too many failed logins in a row from this browser: wait {int(wait + 0.999)} s before trying "
                 "again.")
        return
    try:
        user = authenticate(store, username, password)
    except AuthError as e:
        st.session_state[_FAILS] = int(st.session_state.get(_FAILS, 0)) + 1
        st.session_state[_LAST_FAIL] = time.time()
        st.error(md(e))
    else:
        st.session_state.pop(_FAILS, None)
        start_session(user)
        st.rerun()


left, _ = st.columns([2, 3])
with left:
    ended = session_ended_message()
    if ended:
        st.warning(md(ended), icon=":material/logout:")
    if store.count_users() == 0:
        st.subheader("First run: create the administrator")
        st.write("No accounts exist yet. The first account is an admin, who then creates the reviewers and signers.")
        with st.form("first_admin"):
            username = st.text_input("Username", placeholder="e.g. admin")
            display = st.text_input("Full name")
            pw1 = st.text_input("Password", type="password", help=PASSWORD_HELP)
            pw2 = st.text_input("Password again", type="password")
            if st.form_submit_button("Create admin account", type="primary"):
                if pw1 != pw2:
                    st.error("The two passwords differ.")
                else:
                    ok, user = attempt(create_first_admin, store, username, pw1, display_name=display)
                    if ok:
                        record_login(store, user, method="first run")
                        start_session(user)
                        st.rerun()
    else:
        st.subheader("Log in")
        with st.form("login"):
            username = st.text_input("Username")
            password = st.text_input("Password", type="password")
            if st.form_submit_button("Log in", type="primary"):
                _log_in(username, password)
        if _oidc_configured():
            st.divider()
            if getattr(st.user, "is_logged_in", False):
                # The identity provider vouches for who this is; only an explicit link names the local account,
                # whose role and active flag decide what they may do.
                try:
                    name = oidc_username(dict(st.user), oidc_links(st.secrets.get("oidc_accounts", {})))
                    found = store.get_user(name)
                    if found is None or not found[0].active:
                        raise AuthError(f"your identity is linked to the account {name!r}, which does not exist or "
                                        "is deactivated; ask an administrator")
                except (AuthError, ValueError) as e:
                    st.error(md(e), icon=":material/no_accounts:")
                    st.button("Sign out of the identity provider", on_click=st.logout)
                else:
                    record_login(store, found[0], method="oidc")
                    start_session(found[0])
                    st.rerun()
            else:
                st.button("Log in with your organisation's account", on_click=st.login)
