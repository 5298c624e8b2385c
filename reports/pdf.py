"""Report rendering: Jinja2 (autoescape on) → HTML → WeasyPrint → PDF/A-3b with the results JSON attached.

The rendered PDF carries an empty, visible signature field named :data:`SIGNATURE_FIELD` placed over the
"Electronic signature" box of the last page, so that :func:`reports.signing.sign` can fill it. Only ``data:`` URLs
are fetched while rendering (nothing from disk or network).

Metadata: PDF/A (ISO 19005-3, 6.6.2.3) wants each document-information entry to equal its XMP counterpart. WeasyPrint
writes both (title, author, subject, creator = "leuko reports (WeasyPrint <version>)", creation and modification
dates), but every pyHanko incremental update (the signature field here, the signature later) rewrites the XMP
``pdf:Producer`` as "pyHanko <version>" and the modification date, while it appends itself to the Info /Producer.
:func:`incremental_writer` copies pyHanko's XMP values back into the Info dictionary in the same update.
"""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from reports.context import ReportContext
from reports.draft import provenance_label

TEMPLATES = Path(__file__).resolve().parent / "templates"
SIGNATURE_FIELD = "ReportSignature"
RESULTS_ATTACHMENT = "results.json"
CELLS_ATTACHMENT = "cells.csv"
PDF_VARIANT = "pdf/a-3b"
_PT_PER_CSS_PX = 0.75  # 1 CSS px = 1/96 in; 1 pt = 1/72 in


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _num(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _signed(x: float | None) -> str:
    if x is None:
        return "—"
    return "0.0" if round(x, 1) == 0 else f"{x:+.1f}".replace("-", "−")


def _ci(low: float | None, high: float | None) -> str:
    """``(low to high)`` with signs, or '' when the interval is unknown."""
    if low is None or high is None:
        return ""
    return f"({_signed(low)} to {_signed(high)})"


def _dt(x: datetime | None) -> str:
    if x is None:
        return "not recorded"
    if x.tzinfo is None:
        raise ValueError(f"report times must be timezone-aware, got {x!r}")
    return x.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, signed=_signed, dt=_dt)
    env.globals.update(ci=_ci)
    return env


def creator_tool() -> str:
    """The PDF's /Creator (xmp:CreatorTool): this application and the WeasyPrint version that laid it out."""
    from importlib.metadata import version

    return f"leuko reports (WeasyPrint {version('weasyprint')})"


def render_html(ctx: ReportContext, *, created: datetime | None = None) -> str:
    """The report as HTML (images as data URIs); the print stylesheet is ``templates/report.css``.

    ``created`` (default now) becomes the PDF's creation and modification dates (``dcterms.created/modified``).
    """
    env = _environment()
    ba_figures = [(label, "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode())
                  for label, svg in ctx.bland_altman_figures.items()]
    stamp = (created or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    return env.get_template("report.html.j2").render(
        ctx=ctx, ba_figures=ba_figures, generator=creator_tool(), created=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        provenance=provenance_label(ctx.interpretation_source, edited=ctx.interpretation_edited),
    )


def results_json_bytes(ctx: ReportContext) -> bytes:
    """The machine-readable results attached inside the PDF (UTF-8 JSON)."""
    return json.dumps(ctx.results_json(), indent=2, sort_keys=True, allow_nan=False).encode()


def render(ctx: ReportContext, *, cells_csv: str | None = None) -> bytes:
    """Render ``ctx`` to PDF/A-3b bytes, with ``results.json`` (and ``cells_csv`` as ``cells.csv``, when given)
    attached (AFRelationship /Data): a signed report carries the data it was rendered from."""
    from weasyprint import CSS, HTML, Attachment
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols=["data"], fail_on_errors=True)
    css = CSS(string=(TEMPLATES / "report.css").read_text(), url_fetcher=fetcher)
    document = HTML(string=render_html(ctx), url_fetcher=fetcher).render(stylesheets=[css])
    box = _signature_box(document)
    attachments = [Attachment(string=results_json_bytes(ctx).decode(), name=RESULTS_ATTACHMENT,
                              description=f"Machine-readable results of report {ctx.report_id} v{ctx.version}",
                              relationship="Data", url_fetcher=fetcher)]
    if cells_csv is not None:
        attachments.append(Attachment(string=cells_csv, name=CELLS_ATTACHMENT, relationship="Data",
                                      description=f"Per-cell results of report {ctx.report_id} v{ctx.version}",
                                      url_fetcher=fetcher))
    pdf = document.write_pdf(pdf_variant=PDF_VARIANT, attachments=attachments, uncompressed_pdf=False,
                             custom_metadata=False)
    return _add_signature_field(pdf, *box)


def _signature_box(document: Any) -> tuple[int, tuple[int, int, int, int]]:
    """Page index and PDF box (x1, y1, x2, y2 in pt, origin bottom-left) of the #signature-area element."""
    for index in range(len(document.pages) - 1, -1, -1):
        page = document.pages[index]
        if "signature-area" in page.anchors:
            x1, y1, x2, y2 = (c * _PT_PER_CSS_PX for c in page.anchors["signature-area"])  # top-left origin
            height_pt = page.height * _PT_PER_CSS_PX
            return index, (round(x1), round(height_pt - y2), round(x2), round(height_pt - y1))
    raise AssertionError("the report template lost its #signature-area element")


def attachment(pdf: bytes, name: str) -> bytes | None:
    """The bytes of the file ``name`` attached to ``pdf`` (e.g. :data:`RESULTS_ATTACHMENT`), or None."""
    from pypdf import PdfReader

    found = PdfReader(io.BytesIO(pdf)).attachments.get(name)
    return found[0] if found else None


@lru_cache(maxsize=1)
def _writer_class() -> type:
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.metadata import model, xmp_xml

    class MetadataAgreeingWriter(IncrementalPdfFileWriter):
        """pyHanko's incremental writer; after pyHanko's own metadata update, the Info /Producer and /ModDate are
        set to the XMP ``pdf:Producer`` and ``xmp:ModifyDate`` it wrote (pyHanko's maintainer names
        ``_update_meta`` as the hook for changing its metadata updates, pyHanko issue #223)."""

        def _update_meta(self) -> None:
            super()._update_meta()
            try:
                info_ref = self.trailer.raw_get("/Info")
            except KeyError:
                return  # no Info dictionary: nothing to disagree with the XMP
            stream = self.root["/Metadata"] if "/Metadata" in self.root else None
            if not isinstance(stream, xmp_xml.MetadataStream):
                return
            fields = {name: value for root in stream.xmp for name, value in root}
            info = self.trailer["/Info"]
            if model.PDF_PRODUCER in fields:
                info["/Producer"] = generic.TextStringObject(str(fields[model.PDF_PRODUCER].value))
            if model.XMP_MODDATE in fields and "/ModDate" in info:
                modified = datetime.fromisoformat(str(fields[model.XMP_MODDATE].value))
                info["/ModDate"] = generic.pdf_date(modified)
            self.mark_update(info_ref)

    return MetadataAgreeingWriter


def incremental_writer(pdf: bytes, *, strict: bool = True) -> Any:
    """A pyHanko ``IncrementalPdfFileWriter`` over ``pdf`` that keeps the document-information dictionary equal to
    the XMP metadata (Producer, modification date) when it writes; use it for every update of a report PDF."""
    return _writer_class()(io.BytesIO(pdf), strict=strict)


def _add_signature_field(pdf: bytes, page: int, box: tuple[int, int, int, int]) -> bytes:
    from pyhanko.sign.fields import SigFieldSpec, append_signature_field

    writer = incremental_writer(pdf)
    append_signature_field(writer, SigFieldSpec(sig_field_name=SIGNATURE_FIELD, on_page=page, box=box))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
