"""PDF/A-3b metadata of the rendered and the signed report, read with pypdf: XMP identification, an OutputIntent
with an ICC profile, every font embedded (page and annotation appearances), and the document-information
dictionary equal to its XMP counterparts (ISO 19005-3 6.6.2.3: Producer, Title, Author, Subject, Creator, dates)."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from reports import keys, signing
from reports.demo import demo_context
from reports.pdf import render

pypdf = pytest.importorskip("pypdf")
SIGNER_PW = b"signer-password-1"


def _utc(value: datetime | None) -> datetime | None:
    """pypdf gives XMP dates as naive UTC and Info dates as aware: compare both as naive UTC, to the second."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.replace(microsecond=0)


def metadata_problems(pdf: bytes) -> list[str]:
    """Where the Info dictionary and the XMP packet disagree, or an entry PDF/A expects is missing."""
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    info, xmp = reader.metadata, reader.xmp_metadata
    if info is None or xmp is None:
        return [f"Info present: {info is not None}, XMP present: {xmp is not None}"]
    pairs = {
        "Producer": (info.get("/Producer"), xmp.pdf_producer),
        "Title": (info.get("/Title"), (xmp.dc_title or {}).get("x-default")),
        "Author": (info.get("/Author"), ", ".join(xmp.dc_creator or []) or None),
        "Subject": (info.get("/Subject"), (xmp.dc_description or {}).get("x-default")),
        "Creator": (info.get("/Creator"), xmp.xmp_creator_tool),
        "CreationDate": (_utc(info.creation_date), _utc(xmp.xmp_create_date)),
        "ModDate": (_utc(info.modification_date), _utc(xmp.xmp_modify_date)),
    }
    problems = [f"{k}: Info {a!r} != XMP {b!r}" for k, (a, b) in pairs.items() if a != b]
    problems += [f"{k} missing" for k, (a, b) in pairs.items() if a is None and b is None]
    return problems


def _fonts(resources, seen: set) -> list:
    """Every font dictionary reachable from a /Resources dictionary, through form XObjects."""
    if resources is None:
        return []
    resources = resources.get_object()
    out = [f.get_object() for f in resources.get("/Font", {}).values()]
    for xobj in resources.get("/XObject", {}).values():
        ref = getattr(xobj, "idnum", id(xobj))
        obj = xobj.get_object()
        if ref in seen or obj.get("/Subtype") != "/Form":
            continue
        seen.add(ref)
        out += _fonts(obj.get("/Resources"), seen)
    return out


def unembedded_fonts(pdf: bytes) -> list[str]:
    """Base names of fonts used by pages or annotation appearances without an embedded font program."""
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    fonts, seen = [], set()
    for page in reader.pages:
        fonts += _fonts(page.get("/Resources"), seen)
        for annot in page.get("/Annots", []) or []:
            appearance = annot.get_object().get("/AP", {}).get("/N")
            if appearance is not None and hasattr(appearance.get_object(), "get"):
                fonts += _fonts(appearance.get_object().get("/Resources"), seen)
    missing = []
    for font in fonts:
        if font.get("/Subtype") == "/Type3":
            continue  # glyphs are content streams inside the font
        described = font["/DescendantFonts"][0].get_object() if font.get("/Subtype") == "/Type0" else font
        descriptor = described.get("/FontDescriptor")
        if descriptor is None or not {"/FontFile", "/FontFile2", "/FontFile3"} & set(descriptor.get_object()):
            missing.append(str(font.get("/BaseFont")))
    return missing


def check_pdfa(pdf: bytes) -> list[str]:
    """Every PDF/A metadata problem found (empty when none)."""
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    problems = []
    xmp = reader.xmp_metadata
    if xmp is None or (xmp.pdfaid_part, xmp.pdfaid_conformance) != ("3", "B"):
        problems.append("XMP does not identify PDF/A-3B")
    intents = reader.trailer["/Root"].get("/OutputIntents") or []
    pdfa = [i.get_object() for i in intents if i.get_object().get("/S") == "/GTS_PDFA1"]
    if not pdfa:
        problems.append("no /GTS_PDFA1 OutputIntent")
    else:
        profile = pdfa[0]["/DestOutputProfile"].get_object()
        data = profile.get_data()
        if data[36:40] != b"acsp" or int(profile["/N"]) != 3:  # ICC header signature; RGB
            problems.append("OutputIntent's DestOutputProfile is not an RGB ICC profile")
    problems += [f"font {name} not embedded" for name in unembedded_fonts(pdf)]
    return problems + metadata_problems(pdf)


@pytest.fixture(scope="module")
def rendered() -> bytes:
    return render(demo_context(status="final"))


@pytest.fixture(scope="module")
def signed(rendered, tmp_path_factory):
    """``(signed bytes, its path)``: the rendered report signed with a test key."""
    d = tmp_path_factory.mktemp("pdfa")
    keys.init_ca(d / "ca", name="Test Lab CA", organisation="Test Lab", password=b"ca-password-1", key_type="ec")
    keys.issue_signer(d / "ca", d / "signer.p12", name="Dr. Test Signer", role="consultant haematologist",
                      ca_password=b"ca-password-1", password=SIGNER_PW, key_type="ec")
    (d / "report.pdf").write_bytes(rendered)
    signing.sign(d / "report.pdf", d / "signer.p12", d / "signed.pdf", password=SIGNER_PW)
    return (d / "signed.pdf").read_bytes(), d / "signed.pdf"


def test_rendered_report_pdfa_metadata(rendered):
    assert check_pdfa(rendered) == []
    info = pypdf.PdfReader(io.BytesIO(rendered)).metadata
    assert "WeasyPrint" in info["/Creator"] and info["/Title"].endswith("RPT-DEMO-0001 v1")


def test_signed_report_pdfa_metadata(rendered, signed):
    data, path = signed
    assert data.startswith(rendered)  # the signature is an incremental update
    assert check_pdfa(data) == []
    before = pypdf.PdfReader(io.BytesIO(rendered)).metadata
    after = pypdf.PdfReader(io.BytesIO(data)).metadata
    assert after.creation_date == before.creation_date and after.modification_date >= before.modification_date
    if shutil.which("pdfsig") is not None:  # poppler's independent check of the signature
        out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout
        assert "Signature is Valid" in out and "Total document signed" in out
    if shutil.which("pdffonts") is not None:  # poppler's view of the fonts: the "emb" column
        rows = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True, timeout=60).stdout
        lines = rows.splitlines()[2:]  # after the header and its underline
        assert lines and all(line.split()[-5] == "yes" for line in lines), rows


def test_the_checks_catch_what_they_check(rendered):
    """The helpers are not vacuous: an Info entry changed after the fact is reported."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(rendered)))
    writer.add_metadata({"/Producer": "something else"})
    buf = io.BytesIO()
    writer.write(buf)
    assert any(p.startswith("Producer: Info 'something else'") for p in metadata_problems(buf.getvalue()))
