"""My account: change my password; signers see whether their signing key is installed."""

from __future__ import annotations

import streamlit as st

from pages._common import allowed, attempt, get_store, md, require_user, start_session
from phenotyping.auth import MIN_PASSWORD_LENGTH, change_password, signer_key_path
from phenotyping.settings import get_settings

store = get_store()
user = require_user()
st.title("My account")
st.markdown(f"**{md(user.display_name or user.username)}** · username {md(user.username)} · role "
            f"**{user.role.value}**")

left, _ = st.columns([3, 2])
with left, st.form("password", clear_on_submit=True):
    st.subheader("Change password")
    old = st.text_input("Current password", type="password")
    new1 = st.text_input("New password", type="password",
                         help=f"At least {MIN_PASSWORD_LENGTH} characters, not a common password, not built on your "
                              "name; three or four unrelated words work well")
    new2 = st.text_input("New password again", type="password")
    if st.form_submit_button("Change password", type="primary"):
        if new1 != new2:
            st.error("The two new passwords differ.")
        else:
            ok, _ = attempt(change_password, store, user.username, old, new1)
            if ok:  # other sessions of this account end; this one goes on under the new password
                start_session(user)
                st.success("Password changed. Your other sessions, if any, are logged out.")

if allowed(user, "report.sign"):
    st.subheader("Signing key")
    path = signer_key_path(get_settings(), user.username)
    if get_settings().lab_ca is None:
        st.warning("No lab CA is configured (LEUKO_LAB_CA), so no signing key can be installed or used; ask an "
                   "administrator.")
    if path.is_file():
        st.success("Your signing key is installed; signing asks for its password each time.")
    else:
        st.info("No signing key installed yet; the Report screen asks for your .p12 file at your first signature.")
