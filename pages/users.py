"""Users (admin): create accounts, change roles, deactivate, reset passwords, unlock accounts locked after repeated
failed logins. A role change, deactivation or password reset logs the account's live sessions out."""

from __future__ import annotations

import streamlit as st

from pages._common import attempt, flash, get_store, require, require_user, show_flash, start_session
from phenotyping.auth import (MIN_PASSWORD_LENGTH, create_user, locked_until, set_password, unlock_account,
                              update_account)
from phenotyping.schemas import Role

USERNAME_RULE = ("2-32 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit "
                 "(e.g. j.smith)")


def checked_username(name: str) -> str:
    """The typed username, stripped; ValueError saying what to type instead of the pattern the account model uses."""
    import re

    value = name.strip()
    if not value:
        raise ValueError(f"Give a username: {USERNAME_RULE}.")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,31}", value):
        hint = f" (try {value.lower()!r})" if re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,31}", value.lower()) else ""
        raise ValueError(f"Username {value!r} is not allowed{hint}: {USERNAME_RULE}.")
    return value


store = get_store()
user = require_user()
st.title("Users")
require(user, "users.manage", "Managing users")
show_flash()

accounts = store.list_users()
locks = {u.username: locked_until(store, u.username) for u in accounts}
st.dataframe([{"username": u.username, "name": u.display_name, "role": u.role.value, "active": u.active,
               "locked until (UTC)": f"{locks[u.username]:%Y-%m-%d %H:%M}" if locks[u.username] else ""}
              for u in accounts], hide_index=True, width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("New account")
    # A refused form keeps what was typed; a new generation of keys empties it once the account exists.
    gen = st.session_state.setdefault("_new_user_generation", 0)
    with st.form(f"new_user_{gen}", clear_on_submit=False):
        username = st.text_input("Username", help="lower-case letters, digits, '.', '_' or '-'", key=f"nu_name_{gen}")
        display = st.text_input("Full name", key=f"nu_display_{gen}")
        role = st.selectbox("Role", [r.value for r in Role], key=f"nu_role_{gen}")
        pw = st.text_input("Initial password", type="password", key=f"nu_pw_{gen}",
                           help=f"At least {MIN_PASSWORD_LENGTH} characters, not a common password, not built on the "
                                "name")
        if st.form_submit_button("Create account", type="primary"):
            ok, name = attempt(checked_username, username)
            ok, u = attempt(create_user, store, name, pw, role, actor=user.username, display_name=display) if ok \
                else (False, None)
            if ok:
                st.session_state["_new_user_generation"] = gen + 1
                flash(f"Account {u.username} ({u.role.value}) created.")
                st.rerun()
right.subheader("Change an account")
with right.container(border=True):
    names = [u.username for u in accounts]
    who = st.selectbox("Account", names)
    target = next(u for u in accounts if u.username == who)
    new_role = st.selectbox("Role", [r.value for r in Role], index=[r.value for r in Role].index(target.role.value),
                            key=f"role_{who}")
    active = st.checkbox("Active", value=target.active, key=f"active_{who}")
    if locks[who]:
        st.warning(f"Locked after repeated failed logins until {locks[who]:%Y-%m-%d %H:%M} UTC.",
                   icon=":material/lock:")
        if st.button("Unlock", key=f"unlock_{who}", icon=":material/lock_open:"):
            ok, _ = attempt(unlock_account, store, who, actor=user.username)
            if ok:
                flash(f"Account {who} unlocked.")
                st.rerun()
    if st.button("Save changes"):
        ok, _ = attempt(update_account, store, who, actor=user.username, role=new_role, active=active)
        if ok:
            flash(f"Account {who} updated.")
            st.rerun()
    new_pw = st.text_input("New password", type="password", key=f"pw_{who}")
    if st.button("Reset password") and new_pw:
        ok, _ = attempt(set_password, store, who, new_pw, actor=user.username)
        if ok:
            if who == user.username:  # the account's other sessions end; this one goes on
                start_session(user)
            flash(f"Password of {who} reset; {'your other' if who == user.username else 'its'} live sessions are "
                  "logged out.")
            st.rerun()
