"""Signatures that are not what they seem: shadow attacks, forged or expired certificates, preliminary PDFs.

Certificates are made here with ``cryptography``: the lab CA of ``python -m reports keys init-ca`` issues the good
one; the bad ones differ from it in one rule each (expired, not yet valid, another CA, no digital-signature key
usage, no common name, another person's name).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from phenotyping.auth import install_signer_key, signer_key_path
from phenotyping.certificates import check_signer_certificate
from phenotyping.settings import Settings
from reports import keys, signing
from reports.__main__ import main
from reports.demo import demo_context
from reports.pdf import render

CA_PW, KEY_PW = b"ca-password-1", b"signer-password-1"
NOW = dt.datetime.now(dt.timezone.utc)


def _usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=True, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def make_p12(path, *, ca_dir=None, name: str | None = "Dr Sig", not_before=None, not_after=None,
             digital_signature: bool = True):
    """A PKCS#12 for ``name`` issued by the CA in ``ca_dir`` (None: self-signed), one rule changed at a time."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else
                        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Lab")])
    if ca_dir is None:
        issuer, issuer_key, chain = subject, key, []
    else:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / keys.CA_CERT).read_bytes())
        issuer, chain = ca_cert.subject, [ca_cert]
        issuer_key = serialization.load_pem_private_key((ca_dir / keys.CA_KEY).read_bytes(), password=CA_PW)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(days=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"k", key, cert, chain,
                                                           serialization.BestAvailableEncryption(KEY_PW)))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    keys.init_ca(d / "ca", name="Test Lab CA", password=CA_PW, key_type="ec")
    keys.init_ca(d / "other-ca", name="Another CA", password=CA_PW, key_type="ec")
    keys.issue_signer(d / "ca", d / "good.p12", name="Dr Sig", role="haematologist", ca_password=CA_PW,
                      password=KEY_PW, key_type="ec")
    make_p12(d / "self-signed.p12")
    make_p12(d / "expired.p12", ca_dir=d / "ca", not_before=NOW - dt.timedelta(days=400),
             not_after=NOW - dt.timedelta(days=30))
    make_p12(d / "future.p12", ca_dir=d / "ca", not_before=NOW + dt.timedelta(days=30))
    make_p12(d / "other-ca.p12", ca_dir=d / "other-ca")
    make_p12(d / "no-usage.p12", ca_dir=d / "ca", digital_signature=False)
    make_p12(d / "no-cn.p12", ca_dir=d / "ca", name=None)
    make_p12(d / "other-name.p12", ca_dir=d / "ca", name="Someone Else")
    (d / "final.pdf").write_bytes(render(demo_context(status="final")))
    (d / "preliminary.pdf").write_bytes(render(demo_context(status="preliminary")))
    signing.sign(d / "final.pdf", d / "good.p12", d / "signed.pdf", password=KEY_PW)
    return d


def _cert(p12):
    return pkcs12.load_key_and_certificates(p12.read_bytes(), KEY_PW)[1]


def _verify_cli(capsys, *argv) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["verify", *map(str, argv)])
    return rc, json.loads(capsys.readouterr().out)


def _shadow(signed_pdf, out):
    """An incremental update after the signature that paints a white rectangle over the first page."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    w = IncrementalPdfFileWriter(io.BytesIO(signed_pdf.read_bytes()), strict=False)
    ref = w.add_object(generic.StreamObject(stream_data=b"q 1 1 1 rg 30 200 540 500 re f Q"))
    w.add_stream_to_page(0, ref)
    buf = io.BytesIO()
    w.write(buf)
    out.write_bytes(buf.getvalue())
    return out


# -- item 1: certification and the shadow attack ------------------------------------------------------------------
def test_signed_report_is_certified_no_changes(pki):
    from pypdf import PdfReader

    root = PdfReader(pki / "signed.pdf").trailer["/Root"]
    docmdp = root["/Perms"]["/DocMDP"].get_object()
    assert docmdp["/Reference"][0]["/TransformParams"]["/P"] == 1  # no changes permitted
    assert signing.verify(pki / "signed.pdf", trust=pki / "ca" / "ca.pem")["certified"]


def test_shadow_attack_fails_verify(pki, tmp_path, capsys):
    shadow = _shadow(pki / "signed.pdf", tmp_path / "shadow.pdf")
    rc, out = _verify_cli(capsys, shadow, "--trust", pki / "ca" / "ca.pem")
    assert rc == 1 and out["intact"] and out["trusted"]  # the signed bytes are untouched …
    assert not out["valid"] and not out["modifications_ok"]  # … but what is shown is not what was signed
    assert any("changed after signing" in r and "DocMDP" in r for r in out["reasons"])
    rc, out = _verify_cli(capsys, shadow, "--trust", pki / "ca" / "ca.pem", "--allow-untrusted")
    assert rc == 1 and not out["accepted"]
    if shutil.which("pdfsig"):  # poppler, independently: the signature no longer covers the document shown
        text = subprocess.run(["pdfsig", str(shadow)], capture_output=True, text=True, timeout=60).stdout
        assert "Total document signed" not in text


# -- item 2: exit 0 means intact and trusted ----------------------------------------------------------------------
def test_forged_and_expired_signers_fail_verify(pki, tmp_path, capsys):
    for name in ("self-signed", "expired"):
        signing.sign(pki / "final.pdf", pki / f"{name}.p12", tmp_path / f"{name}.pdf", password=KEY_PW)
        rc, out = _verify_cli(capsys, tmp_path / f"{name}.pdf", "--trust", pki / "ca" / "ca.pem")
        assert rc == 1 and out["intact"] and not out["trusted"] and not out["valid"], name
        assert out["reasons"], name
    assert any("expired" in r for r in out["reasons"])
    rc, out = _verify_cli(capsys, tmp_path / "self-signed.pdf", "--trust", pki / "ca" / "ca.pem", "--allow-untrusted")
    assert rc == 0 and out["trusted"] is False and out["accepted"] and "NOT trusted" in out["note"]


def test_verify_without_trust_anchor_exits_non_zero_and_says_how(pki, capsys, monkeypatch):
    from phenotyping.settings import get_settings

    monkeypatch.delenv("LEUKO_LAB_CA", raising=False)
    get_settings.cache_clear()
    rc, out = _verify_cli(capsys, pki / "signed.pdf")
    assert rc == 1 and out["intact"] and not out["trusted"]
    assert any("LEUKO_LAB_CA" in r and "--trust" in r for r in out["reasons"])
    monkeypatch.setenv("LEUKO_LAB_CA", str(pki / "ca" / "ca.pem"))
    get_settings.cache_clear()
    try:
        rc, out = _verify_cli(capsys, pki / "signed.pdf")
    finally:
        get_settings.cache_clear()
    assert rc == 0 and out["valid"] and out["trusted"] and out["reasons"] == []


# -- item 3: which certificates may sign --------------------------------------------------------------------------
RULES = {"expired": "expired", "future": "not valid yet", "other-ca": "not issued by the lab CA",
         "self-signed": "not issued by the lab CA", "no-usage": "digital signature",
         "no-cn": "no subject common name", "other-name": "issued to 'Someone Else', not to 'Dr Sig'"}


@pytest.mark.parametrize("name", sorted(RULES))
def test_bad_certificate_names_the_failed_rule(pki, name):
    failed = check_signer_certificate(_cert(pki / f"{name}.p12"), lab_ca=pki / "ca" / "ca.pem", signer_name="Dr Sig")
    assert len(failed) == 1 and RULES[name] in failed[0], failed


def test_good_certificate_passes_and_no_lab_ca_is_a_failed_rule(pki):
    cert = _cert(pki / "good.p12")
    assert check_signer_certificate(cert, lab_ca=pki / "ca" / "ca.pem", signer_name="Sig, Dr.") == []
    assert "LEUKO_LAB_CA" in check_signer_certificate(cert, lab_ca=None, signer_name="Dr Sig")[0]


@pytest.mark.parametrize("name", sorted(RULES))
def test_install_signer_key_refuses_a_bad_certificate(pki, tmp_path, name):
    settings = Settings(db_path=tmp_path / "lab.duckdb", lab_ca=pki / "ca" / "ca.pem")
    with pytest.raises(ValueError, match="refused: .*" + RULES[name].replace("(", r"\(")):
        install_signer_key(settings, "sig", (pki / f"{name}.p12").read_bytes(), KEY_PW, signer_name="Dr Sig")
    assert not signer_key_path(settings, "sig").exists()


def test_install_signer_key_needs_a_configured_lab_ca(pki, tmp_path):
    settings = Settings(db_path=tmp_path / "lab.duckdb", lab_ca=None)
    with pytest.raises(ValueError, match="LEUKO_LAB_CA"):
        install_signer_key(settings, "sig", (pki / "good.p12").read_bytes(), KEY_PW, signer_name="Dr Sig")
    settings = settings.model_copy(update={"lab_ca": pki / "ca" / "ca.pem"})
    assert install_signer_key(settings, "sig", (pki / "good.p12").read_bytes(), KEY_PW, signer_name="Dr Sig").is_file()


def test_sign_never_writes_unknown_signer(pki, tmp_path):
    with pytest.raises(signing.SigningError, match="no subject common name"):
        signing.sign(pki / "final.pdf", pki / "no-cn.p12", tmp_path / "x.pdf", password=KEY_PW)
    with pytest.raises(signing.SigningError, match="expired"):
        signing.sign(pki / "final.pdf", pki / "expired.p12", tmp_path / "x.pdf", password=KEY_PW,
                     lab_ca=pki / "ca" / "ca.pem")
    assert not (tmp_path / "x.pdf").exists()


# -- item 4: the bare `sign` refuses a preliminary PDF ------------------------------------------------------------
def test_cli_sign_refuses_a_preliminary_pdf(pki, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEUKO_SIGNER_PASSWORD", KEY_PW.decode())
    capsys.readouterr()
    assert main(["sign", str(pki / "preliminary.pdf"), "--key", str(pki / "good.p12"), "--out",
                 str(tmp_path / "p.pdf")]) == 2
    err = capsys.readouterr().err
    assert "preliminary" in err and "PRELIMINARY" in err and "--sample" in err
    assert not (tmp_path / "p.pdf").exists()
    assert main(["sign", str(pki / "final.pdf"), "--key", str(pki / "good.p12"), "--out",
                 str(tmp_path / "f.pdf")]) == 0
