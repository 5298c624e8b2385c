"""Sessions that survive a reload and deep links (issue 20, item 8): the signed session token, the cookie the app
writes and reads back, and page URLs that resolve while logged out and open after the login.

AppTest cannot send cookies, so a "reload" here is a fresh AppTest (a new browser session, empty session state)
whose ``pages._session.browser_cookie`` returns the cookie the previous session's page wrote. Clocks are passed or
tokens issued in the past; nothing waits. tests/test_browser_session.py does the same in Chromium.
"""

from __future__ import annotations

import os
import re
import stat
import time

import pytest
from streamlit.testing.v1 import AppTest

from phenotyping.schemas import Sample, Specimen
from phenotyping.session_token import (SessionTokenError, issue_token, secret_path, session_secret,
                                       verify_token)
from phenotyping.settings import Settings
from tests.conftest import PROJECT_ROOT
from tests.test_app import PASSWORD, app_env, get_store_obj, lab  # noqa: F401 - fixtures

KEY = b"k" * 32


# -- the token -------------------------------------------------------------------------------------------------------
def test_a_token_round_trips_and_keeps_its_session_id():
    tok = issue_token(KEY, "rev", 3, sid="abc", now=1000.0, lifetime_s=600)
    got = verify_token(KEY, tok, now=1500.0)
    assert (got.username, got.epoch, got.sid, got.issued_at, got.expires_at) == ("rev", 3, "abc", 1000, 1600)


@pytest.mark.parametrize("mangle", [
    lambda t: t.replace("v1.", "v2.", 1),
    lambda t: t + "x",
    lambda t: t.split(".")[0] + "." + t.split(".")[1],
    lambda t: "",
])
def test_a_tampered_or_truncated_token_is_refused(mangle):
    tok = issue_token(KEY, "rev", 3, sid="abc", now=1000.0, lifetime_s=600)
    with pytest.raises(SessionTokenError) as e:
        verify_token(KEY, mangle(tok), now=1001.0)
    assert e.value.reason in {"malformed", "bad signature"}


def test_a_changed_payload_or_a_foreign_key_fails_the_signature():
    import base64
    import json

    tok = issue_token(KEY, "rev", 3, sid="abc", now=1000.0, lifetime_s=600)
    v, _, sig = tok.split(".")
    admin = base64.urlsafe_b64encode(json.dumps({"u": "admin", "e": 3, "sid": "abc", "iat": 1000, "exp": 1600})
                                     .encode()).rstrip(b"=").decode()
    for bad, key in ((f"{v}.{admin}.{sig}", KEY), (tok, b"another-key-" * 3)):
        with pytest.raises(SessionTokenError) as e:
            verify_token(key, bad, now=1001.0)
        assert e.value.reason == "bad signature"


def test_a_token_expires_and_a_lowered_lifetime_applies_to_old_tokens():
    tok = issue_token(KEY, "rev", 3, sid="abc", now=1000.0, lifetime_s=600)
    with pytest.raises(SessionTokenError, match="expired"):
        verify_token(KEY, tok, now=1600.0)
    with pytest.raises(SessionTokenError, match="expired"):
        verify_token(KEY, tok, now=1400.0, max_age_s=300)
    with pytest.raises(ValueError, match="lifetime"):
        issue_token(KEY, "rev", 3, sid="abc", now=1000.0, lifetime_s=0)


def test_the_key_file_is_created_owner_only_and_reused(tmp_path):
    settings = Settings(db_path=tmp_path / "lab.duckdb")
    key = session_secret(settings)
    path = secret_path(settings.db_path)
    assert path == tmp_path / "lab.duckdb.session-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 64
    assert session_secret(settings) == key
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match=re.escape(f"chmod 600 {path}")):
        session_secret(settings)


def test_the_secret_setting_wins_and_must_be_long(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKO_SESSION_SECRET", "s" * 40)
    assert session_secret(Settings(db_path=tmp_path / "lab.duckdb")) == b"s" * 40
    assert not (tmp_path / "lab.duckdb.session-key").exists()
    monkeypatch.setenv("LEUKO_SESSION_SECRET", "short")
    with pytest.raises(ValueError, match="LEUKO_SESSION_SECRET has 5 characters"):
        session_secret(Settings(db_path=tmp_path / "lab.duckdb"))


# -- the app ---------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def runs_like_the_server(monkeypatch):
    """Every AppTest run executes app.py, as the server does.

    AppTest resets ``PagesManager.uses_pages_directory`` before each run, so from the second run on it sees the
    ``pages/`` folder and executes the requested page's file directly, without app.py (no navigation, no session
    cookie). The server decides that once per process and ``st.navigation`` turns it off for good.
    """
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", __init__)
    # The job runner's warm-up imports torch in a thread while the script thread parses a page; CPython 3.11.7 can
    # then fail ast.parse ("AST constructor recursion depth mismatch"). The warm-up is not what these tests check.
    monkeypatch.setattr("phenotyping.jobs.JobRunner.warm_up", lambda self: None)


def new_browser_session(monkeypatch, cookie: str | None) -> AppTest:
    """A fresh session of the app (a reload) whose browser sends ``cookie``."""
    monkeypatch.setattr("pages._session.browser_cookie", lambda: cookie)
    return AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)


def written_cookie(at: AppTest) -> str | None:
    """The value the page's script writes into the session cookie (None: no write; '' : cleared)."""
    for h in at.html:
        m = re.search(r"leuko_session=([A-Za-z0-9_.\-]*); Max-Age=(\d+)", h.value)
        if m:
            return m.group(1) if m.group(2) != "0" else ""
    return None


def log_in(at: AppTest, user: str = "rev") -> AppTest:
    form = {t.label: t for t in at.text_input}
    form["Username"].input(user)
    form["Password"].input(PASSWORD)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception
    return at


def login_then_cookie(monkeypatch) -> str:
    at = log_in(new_browser_session(monkeypatch, None).run())
    assert at.title[0].value == "Samples"
    cookie = written_cookie(at)
    assert cookie, "the logged-in page writes no session cookie"
    return cookie


def test_a_reload_keeps_the_login(lab, monkeypatch):
    store, _ = lab
    cookie = login_then_cookie(monkeypatch)
    at = new_browser_session(monkeypatch, cookie).run()
    assert not at.exception and at.session_state["username"] == "rev"
    assert at.title[0].value == "Samples"
    logins = [e.after for e in store.list_audit(action="login")]
    assert logins[0] == {"method": "session cookie"} and {"method": "password"} in logins


def test_logout_clears_the_cookie_and_ends_it_on_the_server(lab, monkeypatch):
    store, _ = lab
    cookie = login_then_cookie(monkeypatch)
    at = new_browser_session(monkeypatch, cookie).run()
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert not at.exception and "username" not in at.session_state
    assert written_cookie(at) == ""  # the login screen clears it in the browser
    # a copy of the old cookie (another tab loaded before, a stolen value) no longer logs in
    again = new_browser_session(monkeypatch, cookie).run()
    assert "username" not in again.session_state and again.title[0].value == "Leukocyte review"
    assert store.list_audit(action="session_restore_failed")[0].after == {"reason": "logged out"}


@pytest.mark.parametrize("why", ["tampered", "foreign key", "account changed", "deactivated", "idle"])
def test_a_cookie_that_no_longer_holds_shows_the_login_and_is_audited(lab, monkeypatch, why):
    from pages import _session
    from phenotyping.auth import set_password, update_account

    store, _ = lab
    cookie = login_then_cookie(monkeypatch)
    epoch = store.users.session_epoch("rev")
    if why == "tampered":
        cookie = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    elif why == "foreign key":
        cookie = issue_token(b"x" * 32, "admin", store.users.session_epoch("admin"), sid="s", now=time.time(),
                             lifetime_s=600)
    elif why == "account changed":
        set_password(store, "rev", "violet-harbour-kettle", actor="admin")
    elif why == "deactivated":
        update_account(store, "rev", actor="admin", active=False)
    else:
        cookie = issue_token(_session._secret(), "rev", epoch, sid="s", now=time.time() - 31 * 60, lifetime_s=30 * 60)
    at = new_browser_session(monkeypatch, cookie).run()
    assert not at.exception and "username" not in at.session_state
    assert at.title[0].value == "Leukocyte review" and not at.error  # no detail for the browser
    assert written_cookie(at) == ""
    event = store.list_audit(action="session_restore_failed")[0]
    assert event.actor == "anonymous" and event.entity_id == "(session cookie)"
    assert event.after["reason"] == {"tampered": "bad signature", "foreign key": "bad signature",
                                     "account changed": "account changed", "deactivated": "account inactive",
                                     "idle": "expired"}[why]


def test_a_deep_link_shows_the_login_then_opens_its_page_and_sample(lab):
    store, _ = lab
    store.create_sample(Sample(id="S2", specimen=Specimen.blood, patient_pseudonym="P-002"), actor="rev")
    from streamlit.util import calc_hash

    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    # the browser opens /review?sample=S2: AppTest.switch_page only takes files, and while logged out /review
    # is the login screen's file, so the request names the page's URL hash as the browser's does
    at._page_hash = calc_hash("review")
    at.query_params["sample"] = "S2"
    at.run()
    assert not at.exception and at.title[0].value == "Leukocyte review"  # the login, at /review
    log_in(at)
    assert at.title[0].value == "Review"
    assert at.sidebar.selectbox[0].value == "S2" and at.query_params["sample"] == "S2"


def test_picking_a_sample_puts_it_in_the_url_and_an_unknown_one_says_so(lab, monkeypatch):
    store, _ = lab
    store.create_sample(Sample(id="S2", specimen=Specimen.blood, patient_pseudonym="P-002"), actor="rev")
    cookie = login_then_cookie(monkeypatch)
    at = new_browser_session(monkeypatch, cookie).run()
    at.switch_page("pages/review.py").run()
    at.sidebar.selectbox[0].select("S2").run()
    assert at.query_params["sample"] == "S2"
    at = new_browser_session(monkeypatch, cookie)
    at.run()
    at.switch_page("pages/review.py")
    at.query_params["sample"] = "NOPE-9"
    at.run()
    assert not at.exception
    assert any("sample NOPE-9, which does not exist" in w.value for w in at.warning)
