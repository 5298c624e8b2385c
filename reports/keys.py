"""Signing keys for a fresh installation: a lab's self-signed CA and signer PKCS#12 files issued by it.

A lab with certificates from a real CA skips this module: a password-protected PKCS#12 holding the signer's key,
certificate and chain works with :func:`reports.signing.sign`, and ``LEUKO_LAB_CA`` names that CA's certificate.

Layout of a CA folder: ``ca.pem`` (certificate: set ``LEUKO_LAB_CA`` to it, so that signer keys are accepted only
when it issued them and ``verify`` trusts it; share it as the trust anchor for ``verify --trust``) and
``ca.key.pem`` (private key, PKCS#8 encrypted with the CA password; keep it offline).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ec"]
CA_CERT = "ca.pem"
CA_KEY = "ca.key.pem"
MIN_PASSWORD_LENGTH = 8


def _new_key(key_type: KeyType) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r} is not supported; use 'rsa' (3072 bit) or 'ec' (P-256)")


def _check_password(password: bytes, what: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the {what} password must have at least {MIN_PASSWORD_LENGTH} characters")


def init_ca(out_dir: Path, *, name: str, password: bytes, organisation: str = "", years: int = 10,
            key_type: KeyType = "rsa") -> Path:
    """Create a self-signed CA in ``out_dir`` (refuses to overwrite one). Returns the certificate's path."""
    _check_password(password, "CA")
    out_dir = Path(out_dir)
    if (out_dir / CA_KEY).exists() or (out_dir / CA_CERT).exists():
        raise FileExistsError(f"{out_dir} already holds a CA ({CA_CERT}/{CA_KEY}); choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _new_key(key_type)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    subject = x509.Name(attrs)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = out_dir / CA_KEY
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(password)))
    key_path.chmod(0o600)
    (out_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out_dir / CA_CERT


def issue_signer(ca_dir: Path, out: Path, *, name: str, role: str, ca_password: bytes, password: bytes,
                 email: str = "", years: int = 2, key_type: KeyType = "rsa") -> Path:
    """Issue a signer certificate from the CA in ``ca_dir`` and write key + certificate + CA chain to ``out``.

    The certificate's subject carries the name (CN) and role (title); key usage is digital signature and
    non-repudiation, extended key usage document signing (RFC 9336) and e-mail protection. The PKCS#12 file is
    encrypted with ``password`` (the signer's own, not the CA's).
    """
    _check_password(password, "signer")
    ca_dir, out = Path(ca_dir), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; a signer key is never overwritten, choose another file name")
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=ca_password)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{ca_dir} holds no CA ({e.filename} missing); create one with "
                                "`python -m reports keys init-ca`") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot open the CA key in {ca_dir}: wrong CA password?") from e
    key = _new_key(key_type)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.TITLE, role)]
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if org:
        attrs.append(org[0])
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + dt.timedelta(days=365 * years), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36"),
                                              ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, [ca_cert], serialization.BestAvailableEncryption(password)))
    out.chmod(0o600)
    return out
