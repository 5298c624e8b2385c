"""Account protection (issue 16, item 7): lockout and throttling of failed logins, their audit, sessions that end on
an account change or when idle, the password policy, and the same work for unknown and known usernames.

Clocks are injected (``now=``) or session timestamps set; nothing waits and nothing asserts a duration.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from argon2 import PasswordHasher

from phenotyping.auth import AuthError, authenticate, create_first_admin, create_user
from tests.test_app import PASSWORD, app, app_env, errors, get_store_obj, lab, logged_in  # noqa: F401 - fixtures

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
NEW_PW = "violet-harbour-kettle"


@pytest.fixture
def accounts(store, monkeypatch):
    """An admin and a reviewer in an in-memory store, hashed with cheap argon2 parameters."""
    monkeypatch.setattr("phenotyping.auth._hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    create_first_admin(store, "admin", PASSWORD)
    create_user(store, "rev", PASSWORD, "reviewer", actor="admin", display_name="Robin Evans")
    return store


def policy(**kw):
    from phenotyping.auth import LoginPolicy

    return LoginPolicy(**{"max_failures": 5, "lockout": timedelta(minutes=15), "max_lockout": timedelta(hours=4),
                          "delay": timedelta(0), **kw})


def fail(store, name: str, n: int, *, start: datetime = T0, step: timedelta = timedelta(seconds=1), **kw) -> str:
    """``n`` wrong passwords for ``name``, ``step`` apart from ``start``; the last error's message."""
    msg = ""
    for i in range(n):
        with pytest.raises(AuthError) as e:
            authenticate(store, name, "wrong-password-x", now=start + i * step, policy=policy(**kw))
        msg = str(e.value)
    return msg


def actions(store, *names: str) -> list[tuple[str, str, dict]]:
    """(actor, action, after) of the audit events with these actions, oldest first."""
    return [(e.actor, e.action, e.after or {}) for e in reversed(store.list_audit()) if e.action in names]


# -- 1. lockout ------------------------------------------------------------------------------------------------------
def test_lockout_refuses_even_the_right_password_and_says_until_when(accounts):
    msg = fail(accounts, "rev", 5)
    assert "locked until 2026-03-01 09:15 UTC" in msg  # the 5th failure at 09:00:04 locks for 15 minutes
    with pytest.raises(AuthError, match="locked until 2026-03-01 09:15 UTC; try again then, or ask an administrator"):
        authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(minutes=10), policy=policy())
    assert authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(minutes=20), policy=policy()).username == "rev"


def test_a_second_lock_in_a_row_lasts_longer_and_a_success_resets_the_count(accounts):
    fail(accounts, "rev", 5)  # locked until 09:15:04
    msg = fail(accounts, "rev", 5, start=T0 + timedelta(minutes=16))
    assert "locked until 2026-03-01 09:46 UTC" in msg  # 09:16:04 + 30 minutes: the second lock in a row doubles
    later = T0 + timedelta(hours=1)
    authenticate(accounts, "rev", PASSWORD, now=later, policy=policy())
    assert "locked" not in fail(accounts, "rev", 4, start=later)  # counted from zero again
    authenticate(accounts, "rev", PASSWORD, now=later + timedelta(minutes=1), policy=policy())


def test_unknown_usernames_lock_with_the_same_messages(accounts):
    known, unknown = fail(accounts, "rev", 5), fail(accounts, "nobody", 5)
    assert known == unknown and "locked until" in known
    with pytest.raises(AuthError) as k:
        authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(minutes=1), policy=policy())
    with pytest.raises(AuthError) as u:
        authenticate(accounts, "nobody", PASSWORD, now=T0 + timedelta(minutes=1), policy=policy())
    assert str(k.value) == str(u.value)


def test_stale_failures_of_names_without_an_account_are_forgotten(accounts):
    fail(accounts, "nobody", 3)
    assert accounts.users.login_state("nobody").failures == 3
    fail(accounts, "rev", 1, start=T0 + timedelta(days=2))
    assert accounts.users.login_state("nobody").failures == 0
    assert accounts.users.login_state("rev").failures == 1


def test_admin_unlocks_in_the_core_and_on_the_command_line(accounts, tmp_path, monkeypatch, capsys):
    from phenotyping.__main__ import main
    from phenotyping.auth import PermissionDenied, locked_until, unlock_account
    from phenotyping.store import Store

    fail(accounts, "rev", 5, start=datetime.now(timezone.utc))
    assert locked_until(accounts, "rev") is not None
    with pytest.raises(PermissionDenied):
        unlock_account(accounts, "rev", actor="rev")
    assert unlock_account(accounts, "rev", actor="admin") is True
    assert locked_until(accounts, "rev") is None and authenticate(accounts, "rev", PASSWORD)
    assert actions(accounts, "account_unlocked")[-1][:2] == ("admin", "account_unlocked")

    db = tmp_path / "lab.duckdb"
    with Store(db) as s:
        create_first_admin(s, "admin", PASSWORD)
        create_user(s, "rev", PASSWORD, "reviewer", actor="admin")
        fail(s, "rev", 5, start=datetime.now(timezone.utc))
    monkeypatch.setenv("LEUKO_PASSWORD", PASSWORD)
    assert main(["users", "list", "--db", str(db)]) == 0
    assert {u["username"]: u["locked_until"] for u in json.loads(capsys.readouterr().out)}["rev"] is not None
    assert main(["users", "unlock", "rev", "--user", "rev", "--db", str(db)]) == 2  # locked, and not an admin
    capsys.readouterr()
    assert main(["users", "unlock", "rev", "--user", "admin", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out) == {"username": "rev", "was_locked": True}
    with Store(db) as s:
        assert authenticate(s, "rev", PASSWORD).username == "rev"
        assert s.list_audit(action="account_unlocked")[0].actor == "admin"


def test_locked_then_unlocked_on_the_screens(lab, monkeypatch):
    from phenotyping.settings import get_settings

    monkeypatch.setenv("LEUKO_LOGIN_DELAY_S", "0")
    get_settings.cache_clear()
    at = app()
    for _ in range(5):
        at.text_input[0].input("rev")
        at.text_input[1].input("wrong-password-x")
        at.button[0].click().run()
    at.text_input[1].input(PASSWORD)
    at.button[0].click().run()
    assert "username" not in at.session_state and any("is locked until" in e for e in errors(at))
    admin = app("admin", "users")
    next(s for s in admin.selectbox if s.label == "Account").select("rev").run()
    assert any("Locked after repeated failed logins" in w.value for w in admin.warning)
    admin.button(key="unlock_rev").click().run()
    assert not admin.exception and any("Account rev unlocked" in m.value for m in admin.success)
    at = app()
    at.text_input[0].input("rev")
    at.text_input[1].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and at.session_state["username"] == "rev"


# -- 2. throttling ---------------------------------------------------------------------------------------------------
def test_rapid_failures_must_wait_and_a_refused_attempt_checks_no_password(accounts, monkeypatch):
    fail(accounts, "rev", 2, delay=timedelta(seconds=10))  # at 09:00:00 and 09:00:01
    checked = []
    monkeypatch.setattr("phenotyping.auth.verify_password", lambda h, p: checked.append(p) or True)
    slow = policy(delay=timedelta(seconds=10))
    with pytest.raises(AuthError, match="wait 5 s before trying again"):  # 10 s after 09:00:01
        authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(seconds=6), policy=slow)
    assert checked == []  # refused before the password is looked at
    user = authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(seconds=12), policy=slow)
    assert user.username == "rev"


def test_the_login_screen_throttles_a_session_whatever_names_it_tries(lab, monkeypatch):
    from phenotyping.settings import get_settings

    monkeypatch.setenv("LEUKO_LOGIN_DELAY_S", "600")
    get_settings.cache_clear()
    at = app()
    for name in ("rev", "sig"):  # one failure per name: neither name alone has to wait
        at.text_input[0].input(name)
        at.text_input[1].input("wrong-password-x")
        at.button[0].click().run()
    at.text_input[0].input("admin")
    at.text_input[1].input(PASSWORD)
    at.button[0].click().run()
    assert "username" not in at.session_state
    assert any("from this browser: wait" in e for e in errors(at))


# -- 3. audit --------------------------------------------------------------------------------------------------------
def test_every_login_and_failed_login_is_audited_with_its_reason(accounts):
    from phenotyping.auth import update_account

    authenticate(accounts, "rev", PASSWORD, now=T0, policy=policy())
    fail(accounts, "rev", 5)
    fail(accounts, "mistyped-password-in-username", 1)
    with pytest.raises(AuthError):
        authenticate(accounts, "rev", PASSWORD, now=T0 + timedelta(minutes=1), policy=policy())
    update_account(accounts, "admin", actor="admin")  # nothing changes
    create_user(accounts, "gone", PASSWORD, "reviewer", actor="admin")
    update_account(accounts, "gone", actor="admin", active=False)
    with pytest.raises(AuthError, match="deactivated"):
        authenticate(accounts, "gone", PASSWORD, now=T0, policy=policy())
    events = actions(accounts, "login", "login_failed", "account_locked")
    assert events[0] == ("rev", "login", {"method": "password"})
    reasons = [(actor, after.get("reason")) for actor, action, after in events if action == "login_failed"]
    assert reasons == [*[("rev", "bad password")] * 5, ("anonymous", "unknown user"), ("rev", "locked"),
                       ("gone", "inactive")]
    assert [a for a, action, _ in events if action == "account_locked"] == ["rev"]
    assert "mistyped-password" not in json.dumps([e.model_dump(mode="json") for e in accounts.list_audit()])


def _log_out_script():
    from pages._common import logout

    logout()


def test_logging_out_is_audited(lab):
    from streamlit.testing.v1 import AppTest

    store, _ = lab
    at = logged_in(AppTest.from_function(_log_out_script), "rev").run()
    assert not at.exception and "username" not in at.session_state
    assert store.list_audit(action="logout")[0].actor == "rev"
    assert store.list_audit(action="logout")[0].after == {"reason": "logged out"}


# -- 4. sessions end when the account changes ------------------------------------------------------------------------
def test_a_password_reset_role_change_or_deactivation_raises_the_session_epoch(accounts):
    from phenotyping.auth import change_password, set_password, update_account

    epoch = accounts.users.session_epoch
    seen = [epoch("rev")]
    set_password(accounts, "rev", NEW_PW, actor="admin")
    seen.append(epoch("rev"))
    change_password(accounts, "rev", NEW_PW, "copper-meadow-lantern")
    seen.append(epoch("rev"))
    update_account(accounts, "rev", actor="admin", role="signer")
    seen.append(epoch("rev"))
    update_account(accounts, "rev", actor="admin", active=False)
    seen.append(epoch("rev"))
    assert seen == sorted(set(seen)) and len(seen) == 5
    update_account(accounts, "rev", actor="admin", role="signer")  # no change: sessions stay
    assert epoch("rev") == seen[-1] and epoch("nobody") is None


def test_a_password_reset_logs_the_live_session_out(lab):
    from phenotyping.auth import set_password

    store, _ = lab
    at = app("rev", "samples")
    assert at.title[0].value == "Samples"
    set_password(store, "rev", NEW_PW, actor="admin")
    at.run()
    assert not at.exception and "username" not in at.session_state
    assert any("password, role or status changed" in w.value for w in at.warning)
    assert store.list_audit(action="logout")[0].after == {"reason": "account changed"}


def test_changing_ones_own_password_keeps_this_session(lab):
    at = app("rev", "account")
    form = {t.label: t for t in at.text_input}
    form["Current password"].input(PASSWORD)
    form["New password"].input(NEW_PW)
    form["New password again"].input(NEW_PW)
    next(b for b in at.button if b.label == "Change password").click().run()
    assert not at.exception and any("Password changed" in m.value for m in at.success)
    at.run()
    assert at.session_state["username"] == "rev"


# -- 5. idle timeout -------------------------------------------------------------------------------------------------
def idle_session(user: str, idle_s: float):
    """A fresh run of the app for a session of ``user`` whose last interaction was ``idle_s`` seconds ago."""
    from streamlit.testing.v1 import AppTest

    from pages._common import LAST_ACTIVE
    from tests.conftest import PROJECT_ROOT

    at = logged_in(AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60), user)
    at.session_state[LAST_ACTIVE] = time.time() - idle_s
    return at.run()


def test_an_idle_session_is_logged_out(lab):
    store, _ = lab
    at = idle_session("rev", 31 * 60)  # the default timeout is 30 minutes
    assert not at.exception and "username" not in at.session_state
    assert at.title[0].value == "Leukocyte review"  # the login screen
    assert any("logged out after 30 minutes without activity" in w.value for w in at.warning)
    assert store.list_audit(action="logout")[0].after == {"reason": "idle timeout"}


def test_the_idle_timeout_is_a_setting(lab, monkeypatch):
    from pages._common import LAST_ACTIVE
    from phenotyping.settings import get_settings

    monkeypatch.setenv("LEUKO_IDLE_TIMEOUT_MIN", "120")
    get_settings.cache_clear()
    at = idle_session("rev", 31 * 60)
    assert at.session_state["username"] == "rev" and at.session_state[LAST_ACTIVE] > time.time() - 60


# -- 6. password policy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("password", "why"), [
    ("            ", "only spaces"),
    ("short1!", "at least 10 characters"),
    ("Password123!", "most common passwords"),
    ("  QWERTYUIOP ", "most common passwords"),
    ("iloveyou2024", "most common passwords"),
    ("1234567890", "most common passwords"),
    ("zzzzzzzzzzzz", "only 1 different character"),
    ("abababababab", "only 2 different character"),
    ("abcdefghijklm", "run of consecutive characters"),
    ("robin-evans-99", "built on the account's name"),  # the display name
    ("rev-password-1", "built on the account's name"),  # the username around a common password
])
def test_weak_passwords_are_refused_with_what_to_type_instead(accounts, password, why):
    from phenotyping.auth import set_password

    with pytest.raises(ValueError, match=why) as e:
        set_password(accounts, "rev", password, actor="admin")
    assert "unrelated words" in str(e.value) and (not password.strip() or password.strip() not in str(e.value))


@pytest.mark.parametrize("password", [PASSWORD, NEW_PW, "reviewer-password-1", "correct horse battery staple"])
def test_reasonable_passwords_are_accepted(accounts, password):
    from phenotyping.auth import set_password

    set_password(accounts, "rev", password, actor="admin")
    assert authenticate(accounts, "rev", password).username == "rev"


# -- 7. the same work for unknown and known usernames ----------------------------------------------------------------
class CountingHasher(PasswordHasher):
    """A cheap PasswordHasher that records each hash it verifies."""

    def __init__(self):
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash, password):  # noqa: A002 - argon2's own argument name
        self.verified.append(hash)
        return super().verify(hash, password)


def test_an_unknown_username_runs_argon2_like_a_known_one(accounts, monkeypatch):
    from argon2 import extract_parameters

    hasher = CountingHasher()
    monkeypatch.setattr("phenotyping.auth._hasher", hasher)
    stored = accounts.get_user("rev")[1]
    for name in ("rev", "nobody", "someone-else"):
        with pytest.raises(AuthError, match="^unknown username or wrong password$"):
            authenticate(accounts, name, "wrong-password-x", now=T0, policy=policy())
    known, *unknown = hasher.verified
    assert known == stored and len(unknown) == 2 and unknown[0] == unknown[1] != stored
    assert extract_parameters(unknown[0]) == extract_parameters(hasher.hash("x"))  # the same argon2 cost
    assert unknown[0].startswith("$argon2id$")
