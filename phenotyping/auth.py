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

A signer's PKCS#12 signing key (see :mod:`reports.keys`) is kept encrypted with the signer's own password in the
installation's key folder (:func:`signer_key_path`); the password is asked again at every signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from phenotyping.errors import NotFoundError, PhenotypingError
from phenotyping.schemas import Role, User

MIN_PASSWORD_LENGTH = 10

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


def check_password_strength(password: str, *, username: str = "") -> None:
    """Refuse short passwords and the username itself (ValueError says which rule failed)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters (got {len(password)})")
    if username and password.strip().lower() == username.strip().lower():
        raise ValueError("the password must not be the username")


def hash_password(password: str) -> str:
    """argon2id hash in PHC string format (salt and parameters included)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch or an unreadable hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def authenticate(store: Any, username: str, password: str) -> User:
    """The active user with these credentials.

    Raises:
        AuthError: unknown user, wrong password or inactive account (one message for the first two, so the screen
            does not tell which usernames exist).
    """
    found = store.get_user(username.strip().lower())
    if found is None or not verify_password(found[1], password):
        raise AuthError("unknown username or wrong password")
    user, old_hash = found
    if not user.active:
        raise AuthError(f"account {user.username!r} is deactivated; ask an administrator")
    if _hasher.check_needs_rehash(old_hash):  # parameters raised since the hash was made
        store.update_user(user.username, actor=user.username, password_hash=hash_password(password))
    return user


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
    check_password_strength(password, username=username)
    user = User(username=username, display_name=display_name.strip(), role=Role(role))
    return store.create_user(user, password_hash=hash_password(password), actor=actor)


def create_first_admin(store: Any, username: str, password: str, *, display_name: str = "") -> User:
    """Create the installation's first account, an admin; refused once any account exists."""
    if store.count_users() > 0:
        raise AuthError("accounts already exist; an administrator creates further accounts on the Users screen")
    return _new_account(store, username, password, Role.admin, actor=username.strip().lower(),
                        display_name=display_name)


def change_password(store: Any, username: str, old_password: str, new_password: str) -> None:
    """A user changes their own password (the old one is checked first)."""
    user = authenticate(store, username, old_password)
    check_password_strength(new_password, username=user.username)
    store.update_user(user.username, actor=user.username, password_hash=hash_password(new_password))


def set_password(store: Any, username: str, new_password: str, *, actor: str) -> None:
    """An administrator (``actor``) resets a user's password."""
    require_actor(store, actor, "users.manage")
    if store.get_user(username) is None:
        raise NotFoundError(f"no user {username!r}")
    check_password_strength(new_password, username=username)
    store.update_user(username, actor=actor, password_hash=hash_password(new_password))


def update_account(store: Any, username: str, *, actor: str, role: Role | str | None = None,
                   active: bool | None = None) -> User:
    """An administrator (``actor``) changes a user's role or deactivates/reactivates them; the last active admin
    cannot be demoted or deactivated."""
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
