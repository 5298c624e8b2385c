"""Which signer certificates the lab accepts, and whether two spellings name the same person.

A signer certificate is accepted when every rule of :func:`check_signer_certificate` holds: issued (and signed) by
the lab's CA (``Settings.lab_ca``, the ``ca.pem`` that ``python -m reports keys init-ca`` writes), within its
validity at the moment of signing, with the digital-signature key usage, and with a common name that names the
signer. The result is the list of failed rules, so callers can say which one failed.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

_TITLES = {"dr", "prof", "professor", "mr", "mrs", "ms", "mx", "md", "phd", "msc", "bsc", "frcpath", "frcp"}
CONFIGURE_LAB_CA = ("set LEUKO_LAB_CA to the lab CA's certificate (the ca.pem that `python -m reports keys "
                    "init-ca` writes)")


def same_person_name(a: str | None, b: str | None) -> bool:
    """Whether two spellings name the same person: case, punctuation, word order and titles (Dr, Prof…) ignored."""
    def words(x: str | None) -> list[str]:
        return sorted(w for w in re.findall(r"[^\W\d_]+", (x or "").casefold()) if w not in _TITLES)

    return bool(words(a)) and words(a) == words(b)


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's common name (CN), or None when the certificate has none (or an empty one)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = str(names[0].value).strip() if names else ""
    return value or None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM (one or more) or DER file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no certificate.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"CA certificate {path} does not exist; {CONFIGURE_LAB_CA}") from e
    try:
        return (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)])
    except ValueError as e:
        raise ValueError(f"{path} holds no PEM or DER certificate: {e}") from e


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_signer_certificate(cert: x509.Certificate, *, lab_ca: Path | None, signer_name: str | None,
                             at: datetime | None = None) -> list[str]:
    """The rules ``cert`` fails as a signer certificate of this lab (empty when it may sign).

    Args:
        cert: the signer's certificate.
        lab_ca: the lab CA's certificate file (PEM/DER, one or more certificates); None fails the chain rule with
            how to configure it.
        signer_name: the person who signs (display name); the certificate's CN must name them.
        at: the moment of signing (default: now, UTC).
    """
    at = at or datetime.now(timezone.utc)
    failed: list[str] = []
    if lab_ca is None:
        failed.append(f"no lab CA is configured, so the certificate's issuer cannot be checked; {CONFIGURE_LAB_CA}")
    elif not any(_issued_by(cert, ca) for ca in load_certificates(lab_ca)):
        failed.append(f"the certificate is not issued by the lab CA ({lab_ca}): its issuer is "
                      f"{cert.issuer.rfc4514_string()!r}; use a key issued by the lab's CA")
    if at < cert.not_valid_before_utc:
        failed.append(f"the certificate is not valid yet: valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                      f"UTC (checked at {at:%Y-%m-%d %H:%M} UTC)")
    if at > cert.not_valid_after_utc:
        failed.append(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (checked at "
                      f"{at:%Y-%m-%d %H:%M} UTC); ask the lab for a new key")
    try:
        usage_ok = cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        usage_ok = False
    if not usage_ok:
        failed.append("the certificate's key usage does not include digital signature")
    cn = common_name(cert)
    if cn is None:
        failed.append("the certificate has no subject common name (CN), so it does not say who signs")
    elif signer_name is not None and not same_person_name(cn, signer_name):
        failed.append(f"the certificate is issued to {cn!r}, not to {signer_name!r} (the signer's display name); "
                      "use a key issued to you, or ask an admin to correct your display name")
    return failed
