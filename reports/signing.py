"""PAdES signing (pyHanko) and verification of report PDFs.

Signing never rewrites its input: it appends an incremental update holding a PAdES baseline-B certification
signature (``/ETSI.CAdES.detached``, SHA-256, DocMDP "no changes permitted") to a copy written to a new file, so a
later revision that paints over the results (a shadow attack) is reported by every validator. :func:`verify`
honours pyHanko's whole validation status (integrity, DocMDP, trust at the signing time, its bottom line) and names
each failed rule. The visible stamp (signer's name, role, time,
reason) uses an embedded TrueType font, so a PDF/A report stays PDF/A. The stamp fills the report's empty
:data:`reports.pdf.SIGNATURE_FIELD`; other PDFs get a new field at the bottom left of their last page.
"""

from __future__ import annotations

import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from phenotyping.certificates import CONFIGURE_LAB_CA, check_signer_certificate, same_person_name
from reports.pdf import SIGNATURE_FIELD, incremental_writer

__all__ = ["SigningError", "certificate_subject", "same_person_name", "sign", "verify"]

STAMP_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
DEFAULT_REASON = "Report authorised"
_FALLBACK_BOX = (40, 40, 267, 108)  # pt, bottom-left of the last page (80 mm × 24 mm)


class SigningError(ValueError):
    """The PDF or the key could not be used for signing; the message says how to fix it."""


@lru_cache(maxsize=1)
def _stamp_font_bytes() -> bytes:
    """:data:`STAMP_FONT` subset to Latin and rescaled to 1000 units per em.

    pyHanko's glyph accumulator writes glyph widths in font units, which PDF reads as 1/1000 em; DejaVu has 2048
    units per em, so unscaled the stamp's letters are spread to twice their spacing.
    """
    from fontTools import subset
    from fontTools.ttLib import TTFont
    from fontTools.ttLib.scaleUpem import scale_upem

    font = TTFont(str(STAMP_FONT))
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.drop_tables += ["FFTM"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[*range(0x20, 0x250), 0x2013, 0x2014, 0x2018, 0x2019, 0x201C, 0x201D, 0x2212])
    subsetter.subset(font)
    scale_upem(font, 1000)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


def _stamp_font_factory(size: int) -> Any:
    from pyhanko.pdf_utils.font.api import FontEngineFactory
    from pyhanko.pdf_utils.font.opentype import GlyphAccumulator

    class _Factory(FontEngineFactory):
        def create_font_engine(self, writer: Any, obj_stream: Any = None) -> Any:
            if obj_stream is None and writer.stream_xrefs:
                obj_stream = writer.prepare_object_stream()
            return GlyphAccumulator(writer=writer, font_handle=io.BytesIO(_stamp_font_bytes()), font_size=size,
                                    obj_stream=obj_stream)

    return _Factory()


def _load_signer(key_path: Path, password: bytes) -> Any:
    from pyhanko.sign import signers

    try:
        data = Path(key_path).read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"signer key {key_path} does not exist; issue one with "
                                "`python -m reports keys issue`") from e
    try:
        return signers.SimpleSigner.load_pkcs12_data(data, other_certs=(), passphrase=password)
    except ValueError as e:
        raise SigningError(f"cannot open {key_path}: wrong password, or not a PKCS#12 (.p12/.pfx) file") from e


def _subject_attr(cert: Any, attr: str) -> str | None:
    value = cert.subject.native.get(attr)
    return str(value) if value else None


def certificate_subject(key_path: Path, password: bytes) -> dict[str, str | None]:
    """``{"name", "role"}`` (common name and title) of the signing certificate in a PKCS#12 file.

    Raises:
        FileNotFoundError: no such key file.
        SigningError: wrong password or not a PKCS#12 file.
    """
    cert = _load_signer(key_path, password).signing_cert
    return {"name": _subject_attr(cert, "common_name"), "role": _subject_attr(cert, "title")}


def signing_certificate(key_path: Path, password: bytes) -> Any:
    """The signing certificate of a PKCS#12 file, as a ``cryptography`` certificate.

    Raises:
        FileNotFoundError: no such key file.
        SigningError: wrong password or not a PKCS#12 file.
    """
    return _as_cryptography(_load_signer(key_path, password).signing_cert)


def _as_cryptography(cert: Any) -> Any:
    from cryptography import x509

    return x509.load_der_x509_certificate(cert.dump())


def _field_state(reader: Any) -> bool | None:
    """None: the report field is absent; False: present and empty; True: already signed."""
    from pyhanko.sign.fields import enumerate_sig_fields

    for name, value, _ref in enumerate_sig_fields(reader, filled_status=None):
        if name == SIGNATURE_FIELD:
            return value is not None
    return None


def preliminary_marking(data: bytes) -> str | None:
    """The line of a PDF's text that marks it preliminary (our drafts print "PRELIMINARY REPORT" and
    "· PRELIMINARY ·" in the running header), or None. An unreadable PDF gives None (signing then reports it)."""
    import re

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        pages = PdfReader(io.BytesIO(data), strict=False).pages
        for number, page in enumerate(pages, start=1):
            for line in (page.extract_text() or "").splitlines():
                if re.search(r"\bPRELIMINARY\b", line):
                    return f"page {number}: {line.strip()!r}"
    except (PyPdfError, ValueError, KeyError):
        return None
    return None


def sign(pdf_path: Path, key_path: Path, out_path: Path, *, password: bytes, reason: str = DEFAULT_REASON,
         signer_name: str | None = None, role: str | None = None, location: str | None = None,
         lab_ca: Path | None = None) -> dict[str, Any]:
    """Certify ``pdf_path`` with the PKCS#12 at ``key_path`` and write the signed copy to ``out_path``.

    The signature is a certification signature (DocMDP, no changes permitted), so any later revision makes every
    validator report the document as modified. ``signer_name`` (the signer's display name, shown in the visible
    stamp and as the signature's /Name; it must name the certificate's holder, :func:`same_person_name`) and
    ``role`` default to the certificate's common name and title. With ``lab_ca`` the certificate must pass
    :func:`phenotyping.certificates.check_signer_certificate` (issued by that CA, valid now, digital-signature key
    usage, a common name). Returns what was signed: ``{"out", "signer", "role", "reason"}``.

    Raises:
        FileExistsError: ``out_path`` exists (a signed report is never overwritten).
        SigningError: wrong password, unreadable PDF, a PDF that says it is preliminary, a report whose signature
            field is already signed, a certificate without a common name, or (with ``lab_ca``) a certificate rule
            that fails.
    """
    from pyhanko.pdf_utils.misc import PdfReadError
    from pyhanko.pdf_utils.text import TextBoxStyle
    from pyhanko.sign import fields, signers
    from pyhanko.stamp import TextStampStyle

    pdf_path, out_path = Path(pdf_path), Path(out_path)
    if out_path.exists() or out_path.resolve() == pdf_path.resolve():
        raise FileExistsError(f"{out_path} exists; signing writes a new file and never overwrites one")
    if not STAMP_FONT.exists():
        raise FileNotFoundError(f"stamp font {STAMP_FONT} is missing; install the fonts-dejavu-core package")
    signer = _load_signer(key_path, password)
    cert_name = _subject_attr(signer.signing_cert, "common_name")
    failed = (check_signer_certificate(_as_cryptography(signer.signing_cert), lab_ca=lab_ca, signer_name=None)
              if lab_ca is not None else [] if cert_name else
              ["the certificate has no subject common name (CN), so it does not say who signs"])
    if failed:
        raise SigningError(f"the key {key_path} may not sign: " + "; ".join(failed))
    if signer_name and cert_name and not same_person_name(signer_name, cert_name):
        raise SigningError(f"the signer's name {signer_name!r} does not name the certificate's holder "
                           f"{cert_name!r}; sign with a key issued to {signer_name!r}")
    name = signer_name or cert_name
    role = role or _subject_attr(signer.signing_cert, "title") or "signer"
    data = pdf_path.read_bytes()
    marking = preliminary_marking(data)
    if marking is not None:
        raise SigningError(f"{pdf_path} states that it is preliminary ({marking}); a preliminary report is never "
                           "signed: sign the sample's final report with `python -m reports sign --sample ID`")
    try:
        writer = incremental_writer(data, strict=False)  # keeps Info and XMP metadata equal (PDF/A)
    except (PdfReadError, ValueError) as e:
        raise SigningError(f"{pdf_path} is not a readable PDF: {e}") from e
    state = _field_state(writer.prev)
    if state:
        raise SigningError(f"{pdf_path} is already signed; an amendment is a new report version, signed again")
    field_spec = None
    if state is None:
        field_spec = fields.SigFieldSpec(sig_field_name=SIGNATURE_FIELD, on_page=-1, box=_FALLBACK_BOX)
    meta = signers.PdfSignatureMetadata(
        field_name=SIGNATURE_FIELD, reason=reason, name=name, location=location,
        subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha256",
        certify=True, docmdp_permissions=fields.MDPPerm.NO_CHANGES,
    )
    style = TextStampStyle(
        stamp_text="Electronically signed by %(signer)s\nRole: %(role)s\nTime: %(ts)s\nReason: %(reason)s",
        text_box_style=TextBoxStyle(font=_stamp_font_factory(8), font_size=8),
        timestamp_format="%Y-%m-%d %H:%M:%S UTC", border_width=1,
    )
    pdf_signer = signers.PdfSigner(meta, signer=signer, stamp_style=style, new_field_spec=field_spec)
    out = io.BytesIO()
    pdf_signer.sign_pdf(writer, output=out, appearance_text_params={"signer": name, "role": role, "reason": reason})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "xb") as f:  # 'x': fail rather than overwrite if the file appeared meanwhile
        f.write(out.getvalue())
    return {"out": str(out_path), "signer": name, "role": role, "reason": reason}


def _trust_reasons(status: Any, trust: Path | None, signed_at: datetime | None) -> list[str]:
    """Why the signer of a validated signature is not trusted (empty: trusted)."""
    if trust is None:
        return ["no trust anchor was given, so the signer cannot be trusted: give --trust CA.pem or "
                + CONFIGURE_LAB_CA]
    reasons = []
    if not status.trusted:
        why = status.trust_problem_indic.name if status.trust_problem_indic is not None else "no path to a trust anchor"
        reasons.append(f"the signer's certificate is not trusted at the signing time ({why}): it must chain to "
                       f"{trust} and be valid when it signed")
    reasons += check_signer_certificate(_as_cryptography(status.signing_cert), lab_ca=trust, signer_name=None,
                                        at=signed_at)
    return list(dict.fromkeys(reasons))


def _modification_reasons(status: Any) -> list[str]:
    """Why what was added after the signature is not permitted (empty: nothing, or only permitted updates)."""
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    if status.coverage == SignatureCoverageLevel.ENTIRE_FILE:
        return []
    if status.coverage != SignatureCoverageLevel.ENTIRE_REVISION:
        return ["the signature does not cover its whole revision of the file (non-standard byte range)"]
    level = status.modification_level
    if level is None:
        return ["the file was changed after signing and the changes could not be analysed"]
    if status.docmdp_ok is not True:
        return [f"the file was changed after signing (modification level {level.name}) in a way its DocMDP "
                "permissions do not allow: the document shown is not the one signed"]
    return []


def _validate_one(sig: Any, trust: Path | None, roots: list[Any]) -> dict[str, Any]:
    """One embedded signature: the fields of :func:`verify` and its reasons."""
    from pyhanko.sign.validation import KeyUsageConstraints, validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    signed_at: datetime | None = sig.self_reported_timestamp
    context = ValidationContext(trust_roots=roots, allow_fetching=False, moment=signed_at)
    try:
        # key usage: the lab's rule (digital signature), where pyHanko's default asks for non-repudiation
        status = validate_pdf_signature(sig, context,
                                        key_usage_settings=KeyUsageConstraints(key_usage={"digital_signature"}))
    except Exception as e:  # noqa: BLE001 - pyHanko raises on structurally broken signatures: not intact
        return {"intact": False, "modifications_ok": False, "trusted": False, "valid": False, "signer": None,
                "signed_at": None, "covers_whole_file": False, "pyhanko_status": None,
                "reasons": [f"the signature cannot be validated: {e}"]}
    intact = bool(status.intact and status.valid)
    reasons = [] if intact else ["the signed bytes were changed, or the signature does not match its certificate"]
    modification = _modification_reasons(status)
    trust_reasons = _trust_reasons(status, trust, signed_at) if intact else []
    if intact and not status.seed_value_ok:
        modification.append(f"the signature breaks its field's seed-value constraints: "
                            f"{status.seed_value_constraint_error.failure_message}")
    valid = intact and not modification and not trust_reasons and bool(status.bottom_line)
    if intact and not modification and not trust_reasons and not valid:
        reasons.append(f"pyHanko's validation verdict is negative ({status.summary()})")
    return {"intact": intact, "modifications_ok": intact and not modification,
            "trusted": intact and not trust_reasons, "valid": valid,
            "signer": _subject_attr(status.signing_cert, "common_name") or status.signing_cert.subject.human_friendly,
            "signed_at": signed_at.isoformat() if signed_at else None,
            "covers_whole_file": status.coverage == SignatureCoverageLevel.ENTIRE_FILE,
            "pyhanko_status": status.summary(), "reasons": reasons + modification + trust_reasons}


def verify(path: Path, trust: Path | None = None) -> dict[str, Any]:
    """Check every signature of ``path`` with pyHanko's full validation status.

    Returns ``{"signed", "valid", "intact", "modifications_ok", "trusted", "certified", "signer", "signed_at",
    "covers_whole_file", "signatures", "pyhanko_status", "reasons"}``. ``intact``: the signed bytes are unchanged
    and the signature matches its certificate. ``modifications_ok``: nothing was added after the signature except
    what its DocMDP permissions allow (a certified report permits nothing). ``trusted``: the certificate chains to
    a certificate in ``trust`` (PEM/DER; without one nothing is trusted) and, at the signer-reported signing time,
    is within its validity with the digital-signature key usage and a common name. ``valid``: all of these, for
    every signature, and pyHanko's bottom line. ``reasons`` names each failed rule. ``signer`` and ``signed_at``
    (signer-reported, ISO 8601) are the first signature's; ``certified`` says whether it carries DocMDP.
    """
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import read_certification_data

    result: dict[str, Any] = {"signed": False, "valid": False, "intact": False, "modifications_ok": False,
                              "trusted": False, "certified": False, "signer": None, "signed_at": None,
                              "covers_whole_file": False, "signatures": 0, "pyhanko_status": None, "reasons": []}
    data = Path(path).read_bytes()
    roots = list(_trust_roots(trust)) if trust is not None else []
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        sigs = reader.embedded_signatures
        certified = read_certification_data(reader) is not None
    except Exception as e:  # noqa: BLE001 - a damaged file is reported as not intact, whatever the parser raised
        result["signed"] = b"/ByteRange" in data
        result["reasons"] = [f"{path} cannot be read as a PDF: {e}"]
        return result
    if not sigs:
        result["reasons"] = [f"{path} carries no signature"]
        return result
    checks = [_validate_one(sig, trust, roots) for sig in sigs]
    reasons = [r if len(checks) == 1 else f"signature {i} ({sig.field_name}): {r}"
               for i, (sig, c) in enumerate(zip(sigs, checks), start=1) for r in c["reasons"]]
    first = checks[0]
    result.update(
        signed=True, certified=certified, signatures=len(checks), signer=first["signer"],
        signed_at=first["signed_at"], pyhanko_status=first["pyhanko_status"],
        covers_whole_file=checks[-1]["covers_whole_file"], reasons=list(dict.fromkeys(reasons)),
        **{k: all(c[k] for c in checks) for k in ("valid", "intact", "modifications_ok", "trusted")},
    )
    return result


def _trust_roots(trust: Path) -> list[Any]:
    from pyhanko.keys import load_certs_from_pemder

    if not Path(trust).is_file():
        raise FileNotFoundError(f"trust anchor {trust} does not exist; give the lab CA's ca.pem")
    return list(load_certs_from_pemder([str(trust)]))
