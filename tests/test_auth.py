"""Local accounts: argon2 hashes, roles and permissions, first-run admin, the users command."""

from __future__ import annotations

import json

import pytest

from phenotyping.auth import (AuthError, authenticate, can, change_password, create_first_admin, create_user,
                              hash_password, install_signer_key, signer_key_path, update_account, verify_password)
from phenotyping.schemas import Role
from phenotyping.settings import Settings

PW = "long-enough-pw"


def test_hash_is_argon2id_salted_and_verifies():
    h1, h2 = hash_password(PW), hash_password(PW)
    assert h1.startswith("$argon2id$") and h1 != h2
    assert verify_password(h1, PW) and not verify_password(h1, PW + "x")
    assert not verify_password("not-a-hash", PW)


def test_roles_gate_actions():
    assert can(Role.signer, "report.sign") and can("admin", "report.sign")
    assert not can(Role.reviewer, "report.sign")
    assert can(Role.signer, "audit.read") and not can(Role.reviewer, "audit.read")
    assert can(Role.admin, "users.manage") and not can(Role.signer, "users.manage")
    with pytest.raises(KeyError, match="unknown permission"):
        can(Role.admin, "launch.rockets")


def test_first_admin_then_login(store):
    admin = create_first_admin(store, "Admin", PW)
    assert admin.username == "admin" and admin.role == Role.admin
    with pytest.raises(AuthError, match="accounts already exist"):
        create_first_admin(store, "other", PW)
    assert authenticate(store, "admin", PW).username == "admin"
    with pytest.raises(AuthError, match="unknown username or wrong password"):
        authenticate(store, "admin", "wrong-password")
    with pytest.raises(AuthError, match="unknown username or wrong password"):
        authenticate(store, "nobody", PW)
    ev = store.list_audit(action="user.create")[0]
    assert ev.actor == "admin" and "password" not in json.dumps(ev.after)


def test_weak_passwords_refused(store):
    with pytest.raises(ValueError, match="at least 10 characters"):
        create_first_admin(store, "admin", "short")
    with pytest.raises(ValueError, match="built on the account's name"):
        create_first_admin(store, "labmanager", "LabManager2024!")


def test_deactivated_user_cannot_log_in_and_last_admin_is_kept(store):
    create_first_admin(store, "admin", PW)
    create_user(store, "rev", PW, "reviewer", actor="admin")
    update_account(store, "rev", actor="admin", active=False)
    with pytest.raises(AuthError, match="deactivated"):
        authenticate(store, "rev", PW)
    with pytest.raises(AuthError, match="last active admin"):
        update_account(store, "admin", actor="admin", role="reviewer")
    change_password(store, "admin", PW, "another-long-pw")
    assert authenticate(store, "admin", "another-long-pw")


def test_signer_key_is_checked_before_it_is_kept(tmp_path):
    from reports.keys import init_ca, issue_signer

    settings = Settings(db_path=tmp_path / "lab.duckdb", lab_ca=tmp_path / "ca" / "ca.pem")
    init_ca(tmp_path / "ca", name="CA", password=b"ca-secret-1", key_type="ec")
    key = issue_signer(tmp_path / "ca", tmp_path / "k.p12", name="Dr S", role="signer", ca_password=b"ca-secret-1",
                       password=b"sig-secret-1", key_type="ec")
    with pytest.raises(ValueError, match="cannot open this key file"):
        install_signer_key(settings, "sig", key.read_bytes(), b"wrong", signer_name="Dr S")
    path = install_signer_key(settings, "sig", key.read_bytes(), b"sig-secret-1", signer_name="Dr S")
    assert path == signer_key_path(settings, "sig") and path.read_bytes() == key.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.name == "lab-keys"


def test_users_command(tmp_path, monkeypatch, capsys):
    from phenotyping.__main__ import main

    db = tmp_path / "lab.duckdb"
    pw = tmp_path / "pw.txt"
    pw.write_text(PW + "\n")
    assert main(["users", "create-admin", "--username", "boss", "--password-file", str(pw), "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "admin"
    monkeypatch.setenv("LEUKO_USER_PASSWORD", "signer-long-pw")
    monkeypatch.setenv("LEUKO_PASSWORD", PW)  # the acting admin's own password
    assert main(["users", "create", "--username", "sig", "--role", "signer", "--user", "boss", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["users", "create-admin", "--username", "x", "--password-file", str(pw), "--db", str(db)]) == 2
    assert "accounts already exist" in capsys.readouterr().err
    assert main(["users", "list", "--db", str(db)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"]) for u in listed] == [("boss", "admin"), ("sig", "signer")]


# -- single sign-on: provider identity -> local account ---------------------------------------------------------------
ISS = "https://idp.lab.example"


def _links():
    from phenotyping.auth import oidc_links

    return oidc_links({"admin": {"email": "a.admin@lab.example"},
                       "sig": {"subject": "00u-sig-1", "issuer": ISS},
                       "rev": {"email": "Rev.Iewer@Lab.Example"}})


def test_oidc_maps_only_a_verified_exact_email_or_a_linked_subject():
    from phenotyping.auth import oidc_username

    links = _links()
    assert oidc_username({"sub": "x1", "iss": ISS, "email": "a.admin@lab.example", "email_verified": True},
                         links) == "admin"
    assert oidc_username({"sub": "x2", "iss": ISS, "email": "Rev.Iewer@lab.example", "email_verified": "true"},
                         links) == "rev"  # the domain's case does not matter
    assert oidc_username({"sub": "00u-sig-1", "iss": ISS}, links) == "sig"  # no email needed for a subject link
    refused = [
        {"sub": "x3", "iss": ISS, "email": "a.admin@lab.example.evil.test", "email_verified": True},  # other domain
        {"sub": "x4", "iss": ISS, "email": "a.admin@evil.test", "email_verified": True},  # same local part
        {"sub": "x5", "iss": ISS, "email": "a.admin@lab.example", "email_verified": False},  # unverified
        {"sub": "x6", "iss": ISS, "email": "a.admin@lab.example"},  # verification not stated
        {"sub": "x7", "iss": ISS, "email": "rev.iewer@lab.example", "email_verified": True},  # local part's case
        {"sub": "x8", "iss": ISS, "preferred_username": "admin", "name": "admin"},  # chosen by the user
        {"sub": "00u-sig-1", "iss": "https://other-idp.example"},  # the subject at another issuer
    ]
    for claims in refused:
        with pytest.raises(AuthError, match="no local account is linked"):
            oidc_username(claims, links)
    with pytest.raises(AuthError, match="did not mark this address as verified"):
        oidc_username(refused[2], links)


def test_oidc_links_are_checked():
    from phenotyping.auth import OidcLink, oidc_links, oidc_username

    with pytest.raises(ValueError, match="needs a subject or an email"):
        oidc_links({"admin": {"issuer": ISS}})
    with pytest.raises(ValueError, match="unknown key"):
        oidc_links({"admin": {"mail": "a@lab.example"}})
    with pytest.raises(ValueError, match="not an email address"):
        oidc_links({"admin": {"email": "admin"}})
    with pytest.raises(ValueError, match="expected a table"):
        oidc_links({"admin": "a@lab.example"})
    twice = [OidcLink("admin", email="x@lab.example"), OidcLink("rev", email="x@lab.example")]
    with pytest.raises(AuthError, match="several local accounts"):
        oidc_username({"sub": "s", "email": "x@lab.example", "email_verified": True}, twice)
