"""The login's browser cookie: a signed, expiring session token (:mod:`phenotyping.session_token`) that lets a login
survive a reload or a new tab, and is cleared at logout.

Streamlit has no server-side way to set a cookie, so a tiny script in an ``st.html`` element writes
``document.cookie``; the server reads it back from ``st.context.cookies`` (the cookies the browser sent when the
page was loaded). A cookie written by script cannot be ``HttpOnly``; it is ``SameSite=Strict``, ``Path=/``,
``Secure`` when the app is served over https, and lives ``Settings.idle_timeout_min`` (refreshed while the user is
active). What guards it is its signature and the checks at every restore: this server's key, not expired, the
session epoch still the account's (a password, role or status change ends it), the account active, and its
session id not ended by a logout in this server process.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import streamlit as st

from phenotyping.auth import record_login, record_session_restore_failed
from phenotyping.schemas import User
from phenotyping.session_token import SessionTokenError, issue_token, new_sid, session_secret, verify_token
from phenotyping.settings import get_settings

COOKIE = "leuko_session"
#: Session keys: the login's session id, the cookie script last rendered and when it was issued, and the cookie
#: value the browser sent that this session has already looked at (st.context.cookies does not change until the
#: page is loaded again, so a refused or logged-out cookie is not tried again on every rerun).
_SID, _SCRIPT, _ISSUED, _SEEN = "_session_sid", "_session_cookie_js", "_session_cookie_issued", "_session_cookie_seen"
#: Set at logout: the browser may hold a cookie this session wrote, which the login screen clears.
_CLEAR = "_session_cookie_clear"
#: How often (seconds) an active session's cookie is re-issued, at most; the idle timeout bounds it too.
REFRESH_S = 60.0


@st.cache_resource(show_spinner=False)
def _secret() -> bytes:
    return session_secret(get_settings())


@st.cache_resource(show_spinner=False)
def _ended_sids() -> tuple[dict[str, float], threading.Lock]:
    """Session ids ended by a logout in this server process, with when their last cookie expires at the latest."""
    return {}, threading.Lock()


def _idle_s() -> float:
    return get_settings().idle_timeout_min * 60


def browser_cookie() -> str | None:
    """The session cookie the browser sent when the page was loaded (None without one)."""
    value = st.context.cookies.get(COOKIE)
    return value or None


def begin(sid: str | None = None) -> None:
    """Remember a new login (a fresh session id) or a restored one (its cookie's id); the cookie is (re)written."""
    st.session_state[_SID] = sid or new_sid()
    st.session_state.pop(_ISSUED, None)
    st.session_state.pop(_CLEAR, None)


def restore(store: Any) -> tuple[User, str] | None:
    """The user and session id of a valid session cookie this browser sent, for a session without a login.

    A cookie is tried once per page load. A refused one (malformed, not signed with this server's key, expired,
    ended by a logout, account deactivated or changed since) is audited as ``session_restore_failed`` with the
    reason, without naming an account, and the browser sees the login screen with no detail; the cookie is cleared.
    A restored session is audited as a ``login`` with method ``session cookie``.
    """
    raw = browser_cookie()
    if raw is None or st.session_state.get(_SEEN) == raw:
        return None
    st.session_state[_SEEN] = raw
    reason = None
    try:
        tok = verify_token(_secret(), raw, now=time.time(), max_age_s=_idle_s())
    except SessionTokenError as e:
        reason = e.reason
    else:
        ended, lock = _ended_sids()
        with lock:
            was_ended = tok.sid in ended
        found = store.get_user(tok.username)
        if was_ended:
            reason = "logged out"
        elif found is None or not found[0].active:
            reason = "account inactive"
        elif store.users.session_epoch(tok.username) != tok.epoch:
            reason = "account changed"
    if reason is not None:
        record_session_restore_failed(store, reason=reason)
        return None
    record_login(store, found[0], method="session cookie")
    return found[0], tok.sid


def end() -> tuple[str | None, str | None]:
    """Call before the session state is wiped at logout: ends the login's session id for good (in this process)
    and returns what :func:`after_end` needs."""
    sid = st.session_state.get(_SID)
    if sid:
        ended, lock = _ended_sids()
        now = time.time()
        with lock:
            for old in [s for s, until in ended.items() if until < now]:
                del ended[old]
            ended[sid] = now + _idle_s() + REFRESH_S
    return sid, browser_cookie()


def after_end(ended: tuple[str | None, str | None]) -> None:
    """Call after the wipe: the cookie this page load sent is not to be tried again, and the browser clears it."""
    if ended[1] is not None:
        st.session_state[_SEEN] = ended[1]
    if ended[0] is not None or ended[1] is not None:
        st.session_state[_CLEAR] = True


def _script(value: str | None, max_age_s: int) -> str:
    """The snippet that writes (``value``) or clears (None) the cookie; the value is base64url and dots only."""
    assignment = json.dumps(f"{COOKIE}={value or ''}; Max-Age={max_age_s if value else 0}; Path=/; SameSite=Strict")
    return ("<script>(function(){var s=location.protocol==='https:'?'; Secure':'';"
            f"document.cookie={assignment}+s;}})();</script>")


def sync_cookie(username: str | None, epoch: int | None) -> None:
    """Write the session cookie of the logged-in ``username`` (re-issued at most every :data:`REFRESH_S`), or clear
    a cookie the browser sent while no one is logged in. The same snippet is rendered on every run until it
    changes, so a rerun cannot drop it before the browser ran it."""
    now = time.time()
    if username is not None and epoch is not None:
        issued = st.session_state.get(_ISSUED)
        if issued is None or now - issued >= min(REFRESH_S, _idle_s() / 4) or _SCRIPT not in st.session_state:
            sid = st.session_state.setdefault(_SID, new_sid())
            token = issue_token(_secret(), username, epoch, sid=sid, now=now, lifetime_s=_idle_s())
            st.session_state[_SCRIPT] = _script(token, int(_idle_s()))
            st.session_state[_ISSUED] = now
        body = st.session_state[_SCRIPT]
    elif browser_cookie() is not None or st.session_state.get(_CLEAR):
        body = _script(None, 0)
    else:
        return
    st.html(body, unsafe_allow_javascript=True, width="content")
