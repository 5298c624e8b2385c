"""Signed, expiring session tokens: what the app keeps in a browser cookie so that a login survives a reload.

A token is ``v1.<payload>.<signature>``: the payload is compact JSON, base64url without padding, naming the account
(``u``), its session epoch at login (``e``), the login's random session id (``sid``, kept when the token is
refreshed), and the issue and expiry times (``iat``, ``exp``; Unix seconds); the signature is HMAC-SHA256 (RFC 2104)
of ``v1.<payload>`` under the installation's server secret (:func:`session_secret`). A token proves only that this
server issued it before ``exp``: whether the account is still active and its epoch still current is the caller's
check, against the store, at every use.

The secret is ``Settings.session_secret`` (``LEUKO_SESSION_SECRET``, at least 32 characters) or else a random key
in the file ``<db>.session-key`` beside the database, created readable by its owner only (0600). Deleting the file
(or changing the setting) invalidates every outstanding token. An in-memory database gets a key per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "v1"
MIN_SECRET_CHARS = 32
_PROCESS_SECRET = secrets.token_bytes(32)


class SessionTokenError(ValueError):
    """A token that cannot be used; ``reason`` is one of ``malformed``, ``bad signature``, ``expired``."""

    def __init__(self, reason: str):
        super().__init__(f"session token refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class SessionToken:
    """What a valid token says (times in Unix seconds, UTC)."""

    username: str
    epoch: int
    sid: str
    issued_at: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())


def new_sid() -> str:
    """A random session id (128 bits, hex) for a new login."""
    return secrets.token_hex(16)


def issue_token(secret: bytes, username: str, epoch: int, *, sid: str, now: float, lifetime_s: float) -> str:
    """A token for ``username`` at session epoch ``epoch``, valid from ``now`` for ``lifetime_s`` seconds."""
    if lifetime_s <= 0:
        raise ValueError(f"a session token's lifetime must be positive, got {lifetime_s} s")
    payload = {"u": username, "e": int(epoch), "sid": sid, "iat": int(now), "exp": int(now + lifetime_s)}
    body = f"{VERSION}.{_b64(json.dumps(payload, separators=(',', ':'), sort_keys=True).encode())}"
    return f"{body}.{_sign(secret, body)}"


def verify_token(secret: bytes, token: str, *, now: float, max_age_s: float | None = None) -> SessionToken:
    """The token's content when its signature is this server's and it has not expired at ``now``.

    ``max_age_s`` also refuses a token issued longer ago than that (a lifetime setting lowered since it was issued).
    The signature is compared in constant time before the payload is parsed.

    Raises:
        SessionTokenError: ``malformed``, ``bad signature`` or ``expired``.
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION or not parts[1] or not parts[2]:
        raise SessionTokenError("malformed")
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(secret, body).encode("ascii"), parts[2].encode("ascii", "replace")):
        raise SessionTokenError("bad signature")
    try:
        p: Any = json.loads(_unb64(parts[1]))
        tok = SessionToken(username=str(p["u"]), epoch=int(p["e"]), sid=str(p["sid"]), issued_at=int(p["iat"]),
                           expires_at=int(p["exp"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise SessionTokenError("malformed") from e
    if now >= tok.expires_at or (max_age_s is not None and now - tok.issued_at > max_age_s):
        raise SessionTokenError("expired")
    return tok


def secret_path(db_path: Path | str) -> Path | None:
    """The key file beside the database ``db_path`` (``<db>.session-key``); None for an in-memory database."""
    if str(db_path) == ":memory:":
        return None
    p = Path(db_path)
    return p.with_name(p.name + ".session-key")


def session_secret(settings: Any) -> bytes:
    """The installation's HMAC key: ``settings.session_secret`` when set, else the key file beside the database
    (created 0600 with 32 random bytes, hex, on first use), else (in-memory database) a key for this process.

    Raises:
        ValueError: the setting is shorter than :data:`MIN_SECRET_CHARS`, or the key file is empty or readable by
            others than its owner (the message names the file and the fix).
    """
    configured = getattr(settings, "session_secret", None)
    if configured is not None:
        value = configured.get_secret_value() if hasattr(configured, "get_secret_value") else str(configured)
        if len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"LEUKO_SESSION_SECRET has {len(value)} characters; use at least {MIN_SECRET_CHARS} "
                             "random ones (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        return value.encode("utf-8")
    path = secret_path(settings.db_path)
    if path is None:
        return _PROCESS_SECRET
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(f"session key file {path} has mode {mode:o}: others can read it and forge sessions; "
                             f"run chmod 600 {path}") from None
        key = path.read_text(encoding="ascii").strip()
        if not key:
            raise ValueError(f"session key file {path} is empty; delete it and a new key is made (every browser "
                             "then logs in again)")
        return key.encode("ascii")
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        key = secrets.token_hex(32)
        fh.write(key + "\n")
    return key.encode("ascii")
