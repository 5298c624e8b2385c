"""Local accounts: argon2id password hashes in the store, three roles, and what each role may do.

Passwords are hashed with argon2id (RFC 9106) through ``argon2-cffi``'s ``PasswordHasher`` defaults; only the hash
is stored. A user is authenticated by :func:`authenticate`; what the user may do follows from the role alone
(:func:`can`), and the core functions that the screens and the command line share check it themselves
(:func:`require`, :func:`require_actor`), so a caller cannot skip it. The first account of an installation is an admin, created by :func:`create_first_admin` (the app's
first-run screen or ``python -m phenotyping users create-admin``).

Optional single sign-on (OpenID Connect, the app's ``st.login``): the identity provider says who someone is, the
local account says what they may do. :func:`oidc_username` maps a provider identity to a local account only through an
explicit link (:class:`OidcLink`): the provider's subject (with its issuer), or an email address the provider marks
verified that equals the linked address exactly. A username or the part of an address before the ``@`` never maps.

Logins (:func:`authenticate`, the app's and the command line's) are throttled and locked per attempted name, known
or not (:class:`LoginPolicy`), and every login, failed login, lock, unlock and logout is an audit event (``login``,
``login_failed`` with its reason, ``account_locked``, ``account_unlocked``, ``logout``; the app's session cookie
adds ``login`` with method ``session cookie`` and ``session_restore_failed``). An unknown name runs the same
argon2 verification (against a dummy hash) as a known one and gets the same messages, so neither timing nor wording
tells which usernames exist. Passwords follow :func:`check_password_strength` (:mod:`phenotyping.password_policy`).

A signer's PKCS#12 signing key (see :mod:`reports.keys`) is kept encrypted with the signer's own password in the
installation's key folder (:func:`signer_key_path`); the password is asked again at every signature.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from phenotyping.errors import NotFoundError, PhenotypingError
from phenotyping.password_policy import (COMMON_PASSWORDS, MIN_PASSWORD_LENGTH,  # noqa: F401 - re-exported
                                         check_password_strength)
from phenotyping.schemas import Role, User, utcnow

#: What each role may do. A reviewer prepares results; a signer also signs and reads the audit trail; an admin also
#: manages users and models.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "sample.write": frozenset({Role.reviewer, Role.signer, Role.admin}),
    "analyse": frozenset({Role.reviewer, Role.signer, Role.admin}),
    "review": frozenset({Role.reviewer, Role.signer, Role.admin}),
    "counts": frozenset({Role.reviewer, Role.signer, Role.admin}),
    "report.draft": frozenset({Role.reviewer, Role.signer, Role.admin}),
    "report.sign": frozenset({Role.signer, Role.admin}),
    "report.amend": frozenset({Role.signer, Role.admin}),
    "audit.read": frozenset({Role.signer, Role.admin}),
    "models.manage": frozenset({Role.admin}),
    "users.manage": frozenset({Role.admin}),
}

_hasher = PasswordHasher()


#: What each permission lets an account do, as the refusal message says it.
_DOES = {"sample.write": "change samples", "analyse": "analyse samples", "review": "review cells",
         "counts": "enter manual counts and run studies", "report.draft": "draft and edit reports",
         "report.sign": "sign reports", "report.amend": "amend signed reports", "audit.read": "read the audit trail",
         "models.manage": "manage models", "users.manage": "manage accounts"}


class AuthError(PhenotypingError):
    """Wrong credentials, an inactive account or a refused account change."""


class PermissionDenied(AuthError):
    """The acting account does not exist, is deactivated, or its role lacks the permission."""


class LoginRefused(AuthError):
    """Too many failed logins of this name: locked until ``until`` (UTC), or asked to wait until then."""

    def __init__(self, message: str, *, until: datetime):
        super().__init__(message)
        self.until = until


def can(role: Role | str, permission: str) -> bool:
    """Whether ``role`` has ``permission`` (a key of :data:`PERMISSIONS`; an unknown key is an error)."""
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}; known: {sorted(PERMISSIONS)}")
    return Role(role) in PERMISSIONS[permission]


def require(user: User | None, permission: str) -> User:
    """``user`` when it is an active account whose role has ``permission``; the core's own check, called by the
    functions that the screens and the command line share, so neither can skip it.

    Raises:
        PermissionDenied: no account, a deactivated one, or a role without ``permission`` (the message names the
            roles that have it).
    """
    can(Role.admin, permission)  # an unknown permission is a KeyError, whoever asks
    does = _DOES.get(permission, permission)
    if user is None:
        raise PermissionDenied(f"only an account of this installation may {does}; log in (on the command line: "
                               "--user NAME with its password)")
    if not user.active:
        raise PermissionDenied(f"account {user.username!r} is deactivated and may not {does}")
    if not can(user.role, permission):
        roles = " or ".join(r.value for r in Role if can(r, permission))
        raise PermissionDenied(f"{user.username!r} is a {user.role.value}; to {does} takes a {roles} account")
    return user


def require_actor(store: Any, username: str, permission: str) -> User:
    """:func:`require` for the account named ``username`` in ``store`` (an unknown name is refused by name)."""
    found = store.get_user(str(username).strip().lower())
    if found is None:
        raise PermissionDenied(f"{username!r} is not an account of this installation; only an account may "
                               f"{_DOES.get(permission, permission)}")
    return require(found[0], permission)


# -- passwords -------------------------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """argon2id hash in PHC string format (salt and parameters included)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch or an unreadable hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_dummy_hashes: dict[tuple[int, ...], str] = {}


def _dummy_hash() -> str:
    """A hash of a random secret made with the current hasher's parameters, verified for unknown usernames so that
    they cost the same argon2 work as known ones."""
    h = _hasher
    key = (h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.salt_len)
    if key not in _dummy_hashes:
        _dummy_hashes[key] = h.hash(secrets.token_urlsafe(24))
    return _dummy_hashes[key]


# -- logins ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoginPolicy:
    """Throttling and lockout of failed logins, per attempted name (known or not).

    After a second failure in a row a name waits ``delay`` before its next attempt, doubling with each further
    failure; the ``max_failures``-th failure locks it for ``lockout``, each further lock in a row twice as long, up
    to ``max_lockout``. A successful login or an administrator's unlock clears it.
    """

    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)
    max_lockout: timedelta = timedelta(hours=4)
    delay: timedelta = timedelta(seconds=1)

    @classmethod
    def from_settings(cls, settings: Any = None) -> LoginPolicy:
        """The policy of :class:`phenotyping.settings.Settings` (``login_*``); the process settings by default."""
        from phenotyping.settings import get_settings

        s = settings or get_settings()
        return cls(max_failures=s.login_max_failures, lockout=timedelta(minutes=s.login_lockout_min),
                   max_lockout=timedelta(minutes=s.login_lockout_max_min), delay=timedelta(seconds=s.login_delay_s))

    def wait_after(self, failures: int) -> timedelta:
        """How long to wait after ``failures`` failed logins in a row before the next attempt (none after one)."""
        if failures < 2:
            return timedelta(0)
        return min(self.delay * 2 ** min(failures - 2, 30), self.lockout)

    def lock_for(self, lockouts: int) -> timedelta:
        """How long the ``lockouts``-th lock in a row lasts (1 = the first)."""
        return min(self.lockout * 2 ** min(max(lockouts, 1) - 1, 30), self.max_lockout)


def _audit_login(store: Any, action: str, name: str, *, known: bool, **after: Any) -> None:
    """A login event of the account ``name``; a name without an account is recorded as ``anonymous`` and not kept
    (it may be a password typed into the username field)."""
    who = name if known else "anonymous"
    store.record_event(actor=who, action=action, entity="user", entity_id=name if known else "(unknown name)",
                       after=after)


def _refusal(state: Any, policy: LoginPolicy, now: datetime) -> LoginRefused | None:
    """The refusal of a name that is locked or must still wait, before its password is looked at."""
    if state.locked_until is not None and state.locked_until > now:
        return LoginRefused(f"too many failed logins: this username is locked until {state.locked_until:%Y-%m-%d %H:%M}"
                            " UTC; try again then, or ask an administrator to unlock it", until=state.locked_until)
    if state.last_failed_at is not None:
        until = state.last_failed_at + policy.wait_after(state.failures)
        if until > now:
            wait = max(1, int((until - now).total_seconds() + 0.999))
            return LoginRefused(f"too many failed logins in a row: wait {wait} s before trying again", until=until)
    return None


def _fail(store: Any, name: str, *, known: bool, reason: str, policy: LoginPolicy, now: datetime) -> AuthError:
    """Count a failed login of ``name`` (locking it at the policy's limit), audit it; the error to raise."""
    def count(old: Any) -> Any:
        failures = old.failures + 1
        if failures < policy.max_failures:
            return replace(old, failures=failures, last_failed_at=now)
        return replace(old, failures=0, last_failed_at=now, locked_until=now + policy.lock_for(old.lockouts + 1),
                       lockouts=old.lockouts + 1)

    forget = now - max(policy.max_lockout, timedelta(days=1))  # stale rows, mostly names without an account
    old, new = store.users.update_login_state(name, count, forget_before=forget)
    _audit_login(store, "login_failed", name, known=known, reason=reason, failures=old.failures + 1)
    if new.lockouts > old.lockouts:
        _audit_login(store, "account_locked", name, known=known, until=new.locked_until.isoformat(),
                     lock=new.lockouts, after_failures=policy.max_failures)
        return LoginRefused(f"unknown username or wrong password; after {policy.max_failures} failed logins in a row "
                            f"this username is locked until {new.locked_until:%Y-%m-%d %H:%M} UTC (an administrator "
                            "can unlock it)", until=new.locked_until)
    return AuthError("unknown username or wrong password")


def authenticate(store: Any, username: str, password: str, *, now: datetime | None = None,
                 policy: LoginPolicy | None = None, method: str = "password") -> User:
    """The active user with these credentials; every attempt is audited (``login`` or ``login_failed``).

    A name that is locked or must still wait (``policy``, default :meth:`LoginPolicy.from_settings`) is refused
    before its password is checked, whether or not an account has it. An unknown name runs argon2 against a dummy
    hash, as a known name does against its own, and gets the same message as a wrong password.

    Args:
        now: the time of the attempt (UTC; default now): tests pass a clock.
        method: how the user logs in, as the audit records it (``password``, ``password change``).

    Raises:
        LoginRefused: locked (the message says until when) or too soon after the last failures.
        AuthError: unknown user or wrong password (one message), or an inactive account.
    """
    now = now or utcnow()
    policy = policy or LoginPolicy.from_settings()
    name = username.strip().lower()
    found = store.get_user(name)
    state = store.users.login_state(name)
    refused = _refusal(state, policy, now)
    if refused is not None:
        locked = state.locked_until is not None and state.locked_until > now
        _audit_login(store, "login_failed", name, known=found is not None, reason="locked" if locked else "throttled")
        raise refused
    ok = verify_password(_dummy_hash() if found is None else found[1], password)
    if found is None or not ok:
        raise _fail(store, name, known=found is not None, reason="unknown user" if found is None else "bad password",
                    policy=policy, now=now)
    user, old_hash = found
    if not user.active:
        _audit_login(store, "login_failed", name, known=True, reason="inactive")
        raise AuthError(f"account {user.username!r} is deactivated; ask an administrator")
    if state.failures or state.lockouts or state.locked_until is not None:
        store.users.update_login_state(name, lambda old: replace(old, failures=0, last_failed_at=None,
                                                                 locked_until=None, lockouts=0))
    if _hasher.check_needs_rehash(old_hash):  # parameters raised since the hash was made; sessions stay
        store.update_user(user.username, actor=user.username, password_hash=hash_password(password),
                          end_sessions=False)
    _audit_login(store, "login", name, known=True, method=method)
    return user


def record_login(store: Any, user: User, *, method: str) -> None:
    """Audit a login that did not go through :func:`authenticate` (``oidc``, ``first run``)."""
    _audit_login(store, "login", user.username, known=True, method=method)


def record_logout(store: Any, username: str, *, reason: str) -> None:
    """Audit the end of a session: ``logged out``, ``idle timeout``, ``account changed``."""
    _audit_login(store, "logout", username, known=True, reason=reason)


def record_session_restore_failed(store: Any, *, reason: str) -> None:
    """Audit a session cookie the app refused (``malformed``, ``bad signature``, ``expired``, ``logged out``,
    ``account inactive``, ``account changed``); no account is named, since a refused cookie's name proves nothing."""
    store.record_event(actor="anonymous", action="session_restore_failed", entity="user",
                       entity_id="(session cookie)", after={"reason": reason})


def locked_until(store: Any, username: str, *, now: datetime | None = None) -> datetime | None:
    """When the lock of ``username`` ends (UTC), or None when it is not locked at ``now``."""
    until = store.users.login_state(username.strip().lower()).locked_until
    return until if until is not None and until > (now or utcnow()) else None


def unlock_account(store: Any, username: str, *, actor: str) -> bool:
    """An administrator (``actor``) clears the failed logins and lock of an account, audited
    (``account_unlocked``). Returns whether it was locked.

    Raises:
        PermissionDenied: ``actor`` is not an active admin.
        NotFoundError: no such account.
    """
    require_actor(store, actor, "users.manage")
    name = username.strip().lower()
    if store.get_user(name) is None:
        raise NotFoundError(f"no user {username!r}; `users list` shows the accounts")
    old, _ = store.users.update_login_state(name, lambda s: replace(s, failures=0, last_failed_at=None,
                                                                    locked_until=None, lockouts=0))
    was_locked = old.locked_until is not None and old.locked_until > utcnow()
    store.record_event(actor=actor, action="account_unlocked", entity="user", entity_id=name,
                       before={"failures": old.failures, "locked_until": old.locked_until, "lockouts": old.lockouts},
                       after={"was_locked": was_locked})
    return was_locked


def create_user(store: Any, username: str, password: str, role: Role | str, *, actor: str,
                display_name: str = "") -> User:
    """An admin (``actor``, an active admin account) creates an account, audited with ``actor``. The username is
    lower-cased.

    Raises:
        PermissionDenied: ``actor`` is not an active admin.
    """
    require_actor(store, actor, "users.manage")
    return _new_account(store, username, password, role, actor=actor, display_name=display_name)


def _new_account(store: Any, username: str, password: str, role: Role | str, *, actor: str,
                 display_name: str) -> User:
    username = username.strip().lower()
    check_password_strength(password, username=username, display_name=display_name)
    user = User(username=username, display_name=display_name.strip(), role=Role(role))
    return store.create_user(user, password_hash=hash_password(password), actor=actor)


def create_first_admin(store: Any, username: str, password: str, *, display_name: str = "") -> User:
    """Create the installation's first account, an admin; refused once any account exists."""
    if store.count_users() > 0:
        raise AuthError("accounts already exist; an administrator creates further accounts on the Users screen")
    return _new_account(store, username, password, Role.admin, actor=username.strip().lower(),
                        display_name=display_name)


def change_password(store: Any, username: str, old_password: str, new_password: str) -> None:
    """A user changes their own password (the old one is checked first, as a login: a wrong one counts towards the
    lockout). Their live sessions end (the session epoch rises): the app asks them to log in again."""
    user = authenticate(store, username, old_password, method="password change")
    check_password_strength(new_password, username=user.username, display_name=user.display_name)
    store.update_user(user.username, actor=user.username, password_hash=hash_password(new_password))


def set_password(store: Any, username: str, new_password: str, *, actor: str) -> None:
    """An administrator (``actor``) resets a user's password; the user's live sessions end."""
    require_actor(store, actor, "users.manage")
    found = store.get_user(username)
    if found is None:
        raise NotFoundError(f"no user {username!r}")
    check_password_strength(new_password, username=username, display_name=found[0].display_name)
    store.update_user(username, actor=actor, password_hash=hash_password(new_password))


def update_account(store: Any, username: str, *, actor: str, role: Role | str | None = None,
                   active: bool | None = None) -> User:
    """An administrator (``actor``) changes a user's role or deactivates/reactivates them (either ends the user's
    live sessions); the last active admin cannot be demoted or deactivated."""
    require_actor(store, actor, "users.manage")
    found = store.get_user(username)
    if found is None:
        raise NotFoundError(f"no user {username!r}")
    user = found[0]
    new_role = Role(role) if role is not None else user.role
    new_active = user.active if active is None else bool(active)
    if user.role == Role.admin and user.active and (new_role != Role.admin or not new_active):
        admins = [u for u in store.list_users() if u.role == Role.admin and u.active]
        if len(admins) <= 1:
            raise AuthError(f"{username!r} is the last active admin; make another admin first")
    return store.update_user(username, actor=actor, role=new_role, active=new_active)


@dataclass(frozen=True)
class OidcLink:
    """A local account's link to an identity at the OIDC provider: its subject (``sub``, unique per ``issuer``),
    or an email address the provider must mark verified. At least one of ``subject`` and ``email`` is set."""

    username: str
    subject: str | None = None
    issuer: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        User(username=self.username, role=Role.reviewer)  # validates the username
        if not (self.subject or self.email):
            raise ValueError(f"the OIDC link of {self.username!r} needs a subject or an email")
        if self.email is not None and not _is_address(self.email):
            raise ValueError(f"the OIDC link of {self.username!r}: {self.email!r} is not an email address")


def _is_address(value: str) -> bool:
    local, sep, domain = value.strip().rpartition("@")
    return bool(sep and local and "." in domain and " " not in value.strip())


def _same_address(a: str, b: str) -> bool:
    """Exact equality of two addresses, except the domain's case (domains are case-insensitive, local parts not)."""
    la, _, da = a.strip().rpartition("@")
    lb, _, db = b.strip().rpartition("@")
    return la == lb and da.lower() == db.lower()


def oidc_links(section: Mapping[str, Any]) -> list[OidcLink]:
    """The links of the ``[oidc_accounts]`` section of ``.streamlit/secrets.toml``: one entry per local username,
    ``admin = { email = "a.admin@lab.example" }`` or ``sig = { subject = "00u1x…", issuer = "https://idp…" }``.

    Raises:
        ValueError: an entry that is not a table, has unknown keys, or neither subject nor email.
    """
    out = []
    for username, entry in section.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"[oidc_accounts] {username}: expected a table such as {{ email = \"…\" }}, "
                             f"got {entry!r}")
        unknown = set(entry) - {"subject", "issuer", "email"}
        if unknown:
            raise ValueError(f"[oidc_accounts] {username}: unknown key(s) {sorted(unknown)}; "
                             "allowed: subject, issuer, email")
        out.append(OidcLink(username=str(username), subject=entry.get("subject"), issuer=entry.get("issuer"),
                            email=entry.get("email")))
    return out


def oidc_username(claims: Mapping[str, Any], links: Sequence[OidcLink]) -> str:
    """The local username linked to the identity in an ID token's ``claims`` (``st.user``).

    A link matches on the subject (``sub``, and ``iss`` where the link names an issuer), else on the email, only when
    the provider sets ``email_verified`` to true and the address equals the linked one (domain case aside). Claims
    such as ``preferred_username`` or ``name`` are never used: anyone can choose them.

    Raises:
        AuthError: no link matches (the message names the identity, so an admin can link it), or two accounts
            match (an ambiguous configuration).
    """
    sub = str(claims.get("sub") or "")
    iss = str(claims.get("iss") or "")
    by_subject = [lk for lk in links if lk.subject and sub and lk.subject == sub
                  and (lk.issuer is None or lk.issuer == iss)]
    matches = by_subject
    email = str(claims.get("email") or "")
    verified = claims.get("email_verified") is True or str(claims.get("email_verified")).lower() == "true"
    if not matches and email and verified:
        matches = [lk for lk in links if lk.email and _same_address(lk.email, email)]
    names = sorted({lk.username for lk in matches})
    if len(names) > 1:
        raise AuthError(f"this identity is linked to several local accounts ({', '.join(names)}); an administrator "
                        "must keep one link per identity")
    if names:
        return names[0]
    who = email or "(no email)"
    why = (" The provider did not mark this address as verified, so it cannot be used to link an account."
           if email and not verified else "")
    raise AuthError(f"signed in as {who} (subject {sub or '?'} at {iss or 'the provider'}), but no local account is "
                    f"linked to this identity.{why} Ask an administrator to link it to your account.")


def keys_dir(settings: Any) -> Path:
    """The installation's folder of signer keys (beside the database, like the image and report folders)."""
    base = Path(settings.reports_dir())
    return base.parent / (base.name.removesuffix("-reports") + "-keys")


def signer_key_path(settings: Any, username: str) -> Path:
    """Where ``username``'s PKCS#12 signing key is kept (it may not exist yet)."""
    User(username=username, role=Role.signer)  # validates the name: it becomes a file name
    return keys_dir(settings) / f"{username}.p12"


def install_signer_key(settings: Any, username: str, data: bytes, password: bytes, *, signer_name: str) -> Path:
    """Check ``data`` and keep it as ``username``'s key (0600): a PKCS#12 that ``password`` opens, whose certificate
    passes :func:`phenotyping.certificates.check_signer_certificate` against ``settings.lab_ca`` for
    ``signer_name`` (the account's display name).

    Raises:
        ValueError: not a PKCS#12 file, wrong password, no private key in it, or a certificate rule that fails
            (the message names each failed rule); nothing is kept then.
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    from phenotyping.certificates import check_signer_certificate

    try:
        key, cert, _ = pkcs12.load_key_and_certificates(data, password)
    except ValueError as e:
        raise ValueError("cannot open this key file with that password (is it a PKCS#12 .p12/.pfx file?)") from e
    if key is None or cert is None:
        raise ValueError("the PKCS#12 file holds no private key and certificate")
    failed = check_signer_certificate(cert, lab_ca=settings.lab_ca, signer_name=signer_name)
    if failed:
        raise ValueError("this signing key is refused: " + "; ".join(failed))
    path = signer_key_path(settings, username)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".p12.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
