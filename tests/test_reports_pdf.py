"""Report rendering: every section, autoescape, PDF/A-3b metadata, attached JSON, pages render, nothing overflows."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import pytest

from reports.context import ReportContext
from reports.demo import demo_context
from reports.pdf import RESULTS_ATTACHMENT, SIGNATURE_FIELD, render, render_html

SECTIONS = ("status", "identification", "results", "interpretation", "markers", "qc", "comparison", "gallery",
            "method", "authorisation")


def _stress_context() -> ReportContext:
    """Long unbroken names everywhere a user or a model card could put them."""
    ctx = demo_context(status="amended")
    long_label = "atypical_lymphocyte_with_reactive_morphology_" + "x" * 40
    results = [r.model_copy(update={"label": long_label}) if i == 1 else r for i, r in enumerate(ctx.results)]
    study = ctx.study.model_copy(update={
        "name": "Cytospin-comparison-" * 8,
        "rows": [r.model_copy(update={"label": long_label}) if r.label == "lymphocyte" else r for r in ctx.study.rows]})
    return ctx.model_copy(update={
        "lab_name": "Laboratoriumsgeneeskunde-" * 6,
        "results": results,
        "study": study,
        "study_note": "Bland–Altman figures not drawn: " + "x" * 150,
        "replaces_signed_by": "Dr. " + "Konstantinopoulou" * 5,
        "amendment_reason": "Reclassification " * 30,
        "sample_id": "S-" + "9" * 62,
        "patient_pseudonym": "P" * 128,
        "interpretation": "Neutrophils " * 200,
    })


@pytest.fixture(scope="module")
def pdf_bytes() -> bytes:
    return render(_stress_context())


def test_html_has_every_section_and_values():
    ctx = demo_context(status="amended")
    html = render_html(ctx)
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    for text in ("AMENDED REPORT", "replaces RPT-DEMO-0001 version 1", ctx.amendment_reason, "DEMO-0001",
                 "S-2025-0314-01", "Peripheral blood", "2025-03-14 07:30 UTC", "resnet18-qdpc-wbc", "macro F1",
                 "52.0–61.9", "58.1", "40.0–75.0", "out of focus", "Bland–Altman", "data:image/svg+xml;base64,",
                 "data:image/png;base64,", "Dr. Jonas Weber", "edited by the reviewer", "CD16 (a.u.)",
                 "signed 2025-03-13 10:30 UTC by Dr. Jonas Weber", "SHA-256", ctx.replaces_pdf_sha256,
                 "Method-comparison study", "Demo cytospin comparison", "20 samples", "version 2025.03.1",
                 "Classify-and-count %", "reference-intervals.csv (sha256 3b9e0c41d2aa)"):
        assert text in html, text
    assert html.count("data:image/svg+xml;base64,") == len(ctx.bland_altman_figures) == 5
    row = ctx.study.rows[0]
    assert f"{row.bias:+.1f}".replace("-", "−") in html and "No reference interval configured" not in html
    assert re.search(r'<td class="flag">H</td>', html)  # monocyte 9.0 % above 2.0–8.0 %


@pytest.mark.parametrize("status, banner", [("preliminary", "PRELIMINARY REPORT"), ("final", "FINAL REPORT")])
def test_status_banner(status, banner):
    html = render_html(demo_context(status=status))
    assert banner in html and "AMENDED REPORT" not in html


def test_optional_sections_are_left_out():
    ctx = demo_context().model_copy(update={"markers": [], "comparison": [], "study": None, "study_note": None,
                                            "bland_altman_figures": {}, "gallery": {}})
    html = render_html(ctx)
    for section in ("markers", "comparison", "gallery"):
        assert f'id="{section}"' not in html


def test_no_reference_interval_is_said_not_left_blank():
    rows = [r.model_copy(update={"reference_low": None, "reference_high": None}) for r in demo_context().results]
    html = render_html(demo_context().model_copy(update={"results": rows, "reference_source": None}))
    assert "No reference interval configured for peripheral blood in this laboratory" in html
    assert "Reference interval %" not in html and '<td class="flag">' not in html
    partial = [r.model_copy(update={"reference_low": None, "reference_high": None}) if r.label == "basophil" else r
               for r in demo_context().results]
    html = render_html(demo_context().model_copy(update={"results": partial}))
    assert "not configured" in html and "Reference interval %" in html


def test_study_without_figures_says_why():
    ctx = demo_context().model_copy(update={"bland_altman_figures": {},
                                            "study_note": "Bland–Altman figures not drawn: data changed."})
    html = render_html(ctx)
    assert "Bland–Altman figures not drawn: data changed." in html and "data:image/svg" not in html


def test_signing_certificate_name_is_shown_when_it_differs():
    html = render_html(demo_context().model_copy(update={"signer_certificate": "WEBER Jonas (Lab CA)"}))
    assert "Signing certificate" in html and "issued to WEBER Jonas (Lab CA)" in html
    assert "Signing certificate" not in render_html(demo_context())


def test_results_json_round_trips():
    ctx = demo_context(status="amended")
    data = json.loads(json.dumps(ctx.results_json()))
    assert data["schema"] == "leuko-report/2" and data["results"][2]["flag"] == "H"
    back = ReportContext.from_results_json(data)
    assert back == ctx.model_copy(update={"gallery": {}, "bland_altman_figures": {}})
    with pytest.raises(ValueError, match="schema"):
        ReportContext.from_results_json({**data, "schema": "other/9"})


def test_autoescape():
    ctx = demo_context().model_copy(update={"patient_pseudonym": "<script>alert(1)</script>",
                                            "interpretation": "a < b & <b>bold</b>"})
    html = render_html(ctx)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html


def test_amended_needs_reason_and_replaced_version():
    amended = demo_context(status="amended").model_dump()
    for change in ({"amendment_reason": ""}, {"replaces_version": None}):
        with pytest.raises(ValueError, match="amendment_reason"):
            ReportContext.model_validate({**amended, **change})


def test_pdf_is_pdfa3b_with_results_attached(pdf_bytes):
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(pdf_bytes))
    xmp = reader.xmp_metadata
    assert xmp is not None
    raw = xmp.stream.get_data().decode()
    assert re.search(r"pdfaid:part(>|=\")3", raw) and re.search(r"pdfaid:conformance(>|=\")B", raw)
    catalog = reader.trailer["/Root"]
    assert "/OutputIntents" in catalog
    assert str(catalog["/AF"][0].get_object()["/AFRelationship"]) == "/Data"
    attached = reader.attachments[RESULTS_ATTACHMENT][0]
    data = json.loads(attached)
    assert data == json.loads(json.dumps(_stress_context().results_json()))
    assert data["results"][0]["label"] == "neutrophil" and "gallery" not in data
    fields = reader.get_fields()
    assert SIGNATURE_FIELD in fields and fields[SIGNATURE_FIELD].get("/V") is None
    for page in reader.pages:  # every font is embedded
        fonts = page["/Resources"].get("/Font", {})
        for f in fonts.values():
            desc = f.get_object()["/DescendantFonts"][0].get_object()["/FontDescriptor"]
            assert "/FontFile2" in desc or "/FontFile3" in desc


def test_pdftoppm_renders_every_page(pdf_bytes, tmp_path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    from PIL import Image
    from pypdf import PdfReader

    n = len(PdfReader(io.BytesIO(pdf_bytes)).pages)
    assert n >= 2
    (tmp_path / "r.pdf").write_bytes(pdf_bytes)
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(tmp_path / "r.pdf"), str(tmp_path / "p")], check=True,
                   capture_output=True, timeout=60)
    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == n
    for p in pngs:
        lo, hi = Image.open(p).convert("L").getextrema()
        assert hi - lo > 100  # not blank


def test_no_text_outside_the_page_margins(pdf_bytes, tmp_path):
    """Word boxes (pdftotext -bbox) stay inside the 15 mm side margins, even for long unbroken names."""
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    (tmp_path / "r.pdf").write_bytes(pdf_bytes)
    out = subprocess.run(["pdftotext", "-bbox", str(tmp_path / "r.pdf"), "-"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    page_w = float(re.search(r'<page width="([\d.]+)"', out).group(1))
    margin = 15 * 72 / 25.4
    words = re.findall(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)"', out)
    assert len(words) > 200
    for x0, x1 in words:
        assert float(x0) >= margin - 1 and float(x1) <= page_w - margin + 1, (x0, x1)


def test_every_page_is_numbered_page_i_of_n(pdf_bytes, tmp_path):
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    from pypdf import PdfReader

    n = len(PdfReader(io.BytesIO(pdf_bytes)).pages)
    (tmp_path / "r.pdf").write_bytes(pdf_bytes)
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "r.pdf"), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    pages = text.split("\f")[:n]
    assert len(pages) == n >= 2
    for i, page in enumerate(pages, 1):
        assert re.search(rf"\bPage {i} of {n}\b", page), f"page {i}: no 'Page {i} of {n}'"
