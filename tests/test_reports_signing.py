"""PAdES signing and verification: our verify, poppler's pdfsig, tampering, keys and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from reports import keys, signing
from reports.__main__ import main
from reports.demo import demo_context
from reports.pdf import render

CA_PW, SIGNER_PW = b"ca-password-1", b"signer-password-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    keys.init_ca(d / "ca", name="Test Lab CA", organisation="Test Lab", password=CA_PW, key_type="ec")
    keys.issue_signer(d / "ca", d / "signer.p12", name="Dr. Test Signer", role="consultant haematologist",
                      ca_password=CA_PW, password=SIGNER_PW, key_type="ec")
    return d


@pytest.fixture(scope="module")
def signed(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("signed")
    (d / "report.pdf").write_bytes(render(demo_context(status="final")))
    info = signing.sign(d / "report.pdf", pki / "signer.p12", d / "signed.pdf", password=SIGNER_PW)
    return d, info


def _pdfsig(path) -> str:
    return subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout


def test_signature_is_valid_and_trusted(pki, signed):
    d, info = signed
    assert info["signer"] == "Dr. Test Signer" and info["role"] == "consultant haematologist"
    untrusted = signing.verify(d / "signed.pdf")
    assert untrusted["signed"] and untrusted["intact"] and untrusted["covers_whole_file"]
    assert untrusted["trusted"] is False
    trusted = signing.verify(d / "signed.pdf", trust=pki / "ca" / "ca.pem")
    assert trusted["trusted"] and trusted["signer"] == "Dr. Test Signer" and trusted["signed_at"]


def test_unsigned_report_reports_unsigned(signed):
    d, _ = signed
    result = signing.verify(d / "report.pdf")
    assert not result["signed"] and not result["valid"] and not result["intact"] and not result["trusted"]
    assert result["signer"] is None and result["reasons"] == [f"{d / 'report.pdf'} carries no signature"]


def test_signed_report_is_still_pdfa_and_keeps_the_original_bytes(signed):
    from pypdf import PdfReader

    d, _ = signed
    original, new = (d / "report.pdf").read_bytes(), (d / "signed.pdf").read_bytes()
    assert new.startswith(original)  # incremental update: the unsigned report is untouched inside
    raw = PdfReader(d / "signed.pdf").xmp_metadata.stream.get_data().decode()
    assert "pdfaid" in raw and "results.json" in PdfReader(d / "signed.pdf").attachments


def test_pdfsig_accepts_the_signature(signed):
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig (poppler-utils) is not installed")
    out = _pdfsig(signed[0] / "signed.pdf")
    assert "Signature is Valid" in out and "Total document signed" in out
    assert "ETSI.CAdES.detached" in out


def test_one_flipped_byte_breaks_the_signature(signed, tmp_path):
    d, _ = signed
    data = bytearray((d / "signed.pdf").read_bytes())
    pos = data.index(b"stream", len(data) // 4) + 40  # inside a content stream of the signed revision
    data[pos] ^= 0x01
    (tmp_path / "tampered.pdf").write_bytes(bytes(data))
    result = signing.verify(tmp_path / "tampered.pdf")
    assert result["signed"] and not result["intact"] and not result["trusted"]
    if shutil.which("pdfsig"):
        assert "Signature is Valid" not in _pdfsig(tmp_path / "tampered.pdf")


def test_appended_bytes_are_not_covered(signed, tmp_path):
    d, _ = signed
    (tmp_path / "appended.pdf").write_bytes((d / "signed.pdf").read_bytes() + b"\n% appended\n")
    assert signing.verify(tmp_path / "appended.pdf")["covers_whole_file"] is False


def test_sign_never_overwrites_and_rejects_resigning(pki, signed, tmp_path):
    d, _ = signed
    with pytest.raises(FileExistsError):
        signing.sign(d / "report.pdf", pki / "signer.p12", d / "signed.pdf", password=SIGNER_PW)
    with pytest.raises(signing.SigningError, match="already signed"):
        signing.sign(d / "signed.pdf", pki / "signer.p12", tmp_path / "again.pdf", password=SIGNER_PW)
    with pytest.raises(signing.SigningError, match="wrong password"):
        signing.sign(d / "report.pdf", pki / "signer.p12", tmp_path / "x.pdf", password=b"not-the-password")


def test_keys_refuse_short_passwords_and_overwrites(pki, tmp_path):
    with pytest.raises(ValueError, match="at least"):
        keys.init_ca(tmp_path / "ca", name="x", password=b"short")
    with pytest.raises(FileExistsError):
        keys.init_ca(pki / "ca", name="x", password=CA_PW)
    with pytest.raises(ValueError, match="wrong CA password"):
        keys.issue_signer(pki / "ca", tmp_path / "s.p12", name="a", role="b", ca_password=b"wrong-password",
                          password=SIGNER_PW)


def test_command_line_keys_sign_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEUKO_CA_PASSWORD", CA_PW.decode())
    (tmp_path / "pw").write_text(SIGNER_PW.decode() + "\n")
    assert main(["keys", "init-ca", "--out", str(tmp_path / "ca"), "--name", "CLI CA", "--key-type", "ec"]) == 0
    assert main(["keys", "issue", "--ca", str(tmp_path / "ca"), "--name", "Dr. CLI", "--role", "signer",
                 "--out", str(tmp_path / "s.p12"), "--password-file", str(tmp_path / "pw"),
                 "--key-type", "ec"]) == 0
    (tmp_path / "r.pdf").write_bytes(render(demo_context(status="final")))
    monkeypatch.delenv("LEUKO_SIGNER_PASSWORD", raising=False)
    assert main(["sign", str(tmp_path / "r.pdf"), "--key", str(tmp_path / "s.p12"), "--out",
                 str(tmp_path / "s.pdf")]) == 2  # no password given anywhere
    monkeypatch.setenv("LEUKO_SIGNER_PASSWORD", SIGNER_PW.decode())
    assert main(["sign", str(tmp_path / "r.pdf"), "--key", str(tmp_path / "s.p12"), "--out",
                 str(tmp_path / "s.pdf")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s.pdf"), "--trust", str(tmp_path / "ca" / "ca.pem")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"signed", "valid", "intact", "modifications_ok", "trusted", "certified", "signer", "signed_at",
            "covers_whole_file", "reasons", "accepted"} <= set(out)
    assert out["valid"] and out["trusted"] and out["signer"] == "Dr. CLI" and out["reasons"] == []


@pytest.mark.parametrize("argv", [[], ["render"], ["sign"], ["verify"], ["keys"], ["keys", "init-ca"],
                                  ["keys", "issue"], ["bench"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0 and "usage: python -m reports" in capsys.readouterr().out
