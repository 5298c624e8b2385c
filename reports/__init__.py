"""Reports: grounded interpretation drafting, PDF/A rendering, PAdES signing and FHIR/CSV export.

Imports point one way: reports -> phenotyping. Heavy libraries (weasyprint, pyhanko, litellm) load inside the
functions that use them.
"""
