"""PAdES signing (pyHanko) and verification of report PDFs.

Signing never rewrites its input: it appends an incremental update holding a PAdES baseline-B signature
(``/ETSI.CAdES.detached``, SHA-256) to a copy written to a new file. The visible stamp (signer's name, role, time,
reason) uses an embedded TrueType font, so a PDF/A report stays PDF/A. The stamp fills the report's empty
:data:`reports.pdf.SIGNATURE_FIELD`; other PDFs get a new field at the bottom left of their last page.
"""

from __future__ import annotations

import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from reports.pdf import SIGNATURE_FIELD, incremental_writer

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


_TITLES = {"dr", "prof", "professor", "mr", "mrs", "ms", "mx", "md", "phd", "msc", "bsc", "frcpath", "frcp"}


def same_person_name(a: str | None, b: str | None) -> bool:
    """Whether two spellings name the same person: case, punctuation, word order and titles (Dr, Prof…) ignored."""
    def words(x: str | None) -> list[str]:
        import re

        return sorted(w for w in re.findall(r"[^\W\d_]+", (x or "").casefold()) if w not in _TITLES)

    return bool(words(a)) and words(a) == words(b)


def _field_state(reader: Any) -> bool | None:
    """None: the report field is absent; False: present and empty; True: already signed."""
    from pyhanko.sign.fields import enumerate_sig_fields

    for name, value, _ref in enumerate_sig_fields(reader, filled_status=None):
        if name == SIGNATURE_FIELD:
            return value is not None
    return None


def sign(pdf_path: Path, key_path: Path, out_path: Path, *, password: bytes, reason: str = DEFAULT_REASON,
         signer_name: str | None = None, role: str | None = None, location: str | None = None) -> dict[str, Any]:
    """Sign ``pdf_path`` with the PKCS#12 at ``key_path`` and write the signed copy to ``out_path``.

    ``signer_name`` and ``role`` default to the certificate's common name and title. Returns what was signed:
    ``{"out", "signer", "role", "reason"}``.

    Raises:
        FileExistsError: ``out_path`` exists (a signed report is never overwritten).
        SigningError: wrong password, unreadable PDF, or a report whose signature field is already signed.
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
    name = signer_name or _subject_attr(signer.signing_cert, "common_name") or "unknown signer"
    role = role or _subject_attr(signer.signing_cert, "title") or "signer"
    data = pdf_path.read_bytes()
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


def verify(path: Path, trust: Path | None = None) -> dict[str, Any]:
    """Check the last signature of ``path``.

    Returns ``{"signed", "intact", "trusted", "signer", "signed_at", "covers_whole_file"}``: ``intact`` means the
    signed bytes are unchanged and the signature matches the certificate; ``trusted`` means the certificate chains
    to a certificate in ``trust`` (PEM/DER file; without one nothing is trusted); ``covers_whole_file`` is False
    when bytes were appended after signing. ``signed_at`` is the signer-reported time (ISO 8601).
    """
    from pyhanko.keys import load_certs_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    result: dict[str, Any] = {"signed": False, "intact": False, "trusted": False, "signer": None,
                              "signed_at": None, "covers_whole_file": False}
    data = Path(path).read_bytes()
    roots = list(load_certs_from_pemder([str(trust)])) if trust is not None else []
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        sigs = reader.embedded_signatures
    except Exception:  # noqa: BLE001 - a damaged file is reported as not intact, whatever the parser raised
        result["signed"] = b"/ByteRange" in data
        return result
    if not sigs:
        return result
    sig = sigs[-1]
    result["signed"] = True
    try:
        status = validate_pdf_signature(sig, ValidationContext(trust_roots=roots, allow_fetching=False))
    except Exception:  # noqa: BLE001 - pyHanko raises on structurally broken signatures: not intact
        return result
    signed_at: datetime | None = status.signer_reported_dt
    result.update(
        intact=bool(status.intact and status.valid),
        trusted=bool(status.intact and status.valid and status.trusted),
        signer=_subject_attr(status.signing_cert, "common_name") or status.signing_cert.subject.human_friendly,
        signed_at=signed_at.isoformat() if signed_at else None,
        covers_whole_file=status.coverage == SignatureCoverageLevel.ENTIRE_FILE,
    )
    return result
