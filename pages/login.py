"""Log in; on a fresh installation (no accounts yet) create the first admin account."""

from __future__ import annotations

import streamlit as st

from pages._common import attempt, get_store, md
from phenotyping.auth import (MIN_PASSWORD_LENGTH, AuthError, authenticate, create_first_admin, oidc_links,
                              oidc_username)

store = get_store()
st.title("Leukocyte review")
st.caption("Label-free white-blood-cell phenotyping — research use, not clinically validated.")


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all: OIDC is simply not configured
        return False


left, _ = st.columns([2, 3])
with left:
    if store.count_users() == 0:
        st.subheader("First run: create the administrator")
        st.write("No accounts exist yet. The first account is an admin, who then creates the reviewers and signers.")
        with st.form("first_admin"):
            username = st.text_input("Username", placeholder="e.g. admin")
            display = st.text_input("Full name")
            pw1 = st.text_input("Password", type="password", help=f"At least {MIN_PASSWORD_LENGTH} characters")
            pw2 = st.text_input("Password again", type="password")
            if st.form_submit_button("Create admin account", type="primary"):
                if pw1 != pw2:
                    st.error("The two passwords differ.")
                else:
                    ok, user = attempt(create_first_admin, store, username, pw1, display_name=display)
                    if ok:
                        st.session_state["username"] = user.username
                        st.rerun()
    else:
        st.subheader("Log in")
        with st.form("login"):
            username = st.text_input("Username")
            password = st.text_input("Password", type="password")
            if st.form_submit_button("Log in", type="primary"):
                try:
                    user = authenticate(store, username, password)
                except AuthError as e:
                    st.error(md(e))
                else:
                    st.session_state["username"] = user.username
                    st.rerun()
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
                    st.session_state["username"] = found[0].username
                    st.rerun()
            else:
                st.button("Log in with your organisation's account", on_click=st.login)
