"""The DuckDB store: the only package that imports ``duckdb``.

Design:
- :mod:`._db` holds the one connection per process, the per-thread cursors, the write lock, transactions, the
  numbered migrations (:mod:`._migrations`), the audit append and the signed-sample lock check. Every repository
  shares one :class:`~._db.Database`.
- One small repository per aggregate (:mod:`.samples`, :mod:`.cells` with the image files, :mod:`.reviews`,
  :mod:`.predictions`, :mod:`.manual_counts`, :mod:`.reports`, :mod:`.users`, :mod:`.models`, :mod:`.jobs`,
  :mod:`.studies`, :mod:`.audit`), reachable as ``store.samples``, ``store.cells``…; :class:`Store` also keeps every
  method under its long name (``store.create_sample`` is ``store.samples.create``).
- Every change of a sample, cell label, manual count, report, user or model is written to the append-only ``audit``
  table in the same transaction as the change (who, when, what, state before and after). Each audit row carries the
  SHA-256 of its content chained to the previous row's, so a deleted or edited row is detectable
  (:meth:`Store.verify_audit_chain`). The chain is anchored outside the table in ``<db>.audit-anchor`` and batches
  of cells and predictions carry digests of their rows, so truncation, re-chaining and rows changed behind the
  audit's back are detectable too (:meth:`Store.verify_audit`, ``python -m phenotyping audit verify``).
- Cell images are kept as the original file bytes in a content-addressed folder, not as blobs, and are made durable
  before the rows that point to them are committed (see :mod:`.cells`).
- While a sample's latest report version is signed, the sample is locked: changes that would alter its results
  (cells, image QC, predictions, reviews, the analysis model, manual counts) raise :class:`SampleLocked`, checked in
  the same transaction as the write. A new report version that amends the signed one (with a reason) unlocks it.
- All SQL uses ``?`` parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from phenotyping.store._db import Database
from phenotyping.store._migrations import MIGRATIONS as _MIGRATIONS  # noqa: F401 (tests replay old schemas)
from phenotyping.store._migrations import SCHEMA_VERSION
from phenotyping.store.audit import AuditRepository
from phenotyping.store.cells import CellRepository
from phenotyping.store.jobs import JobRepository
from phenotyping.store.manual_counts import ManualCountRepository
from phenotyping.store.models import ModelRepository
from phenotyping.store.predictions import PredictionRepository
from phenotyping.store.reports import ReportRepository
from phenotyping.store.reviews import ReviewRepository
from phenotyping.store.samples import SampleRepository
from phenotyping.store.studies import StudyRepository
from phenotyping.store.users import UserRepository

__all__ = ["SCHEMA_VERSION", "Store"]


def _delegate(repo_attr: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A Store method that calls ``function`` on ``self.<repo_attr>``, with its signature and docstring."""

    @functools.wraps(function)
    def method(self: Store, *args: Any, **kwargs: Any) -> Any:
        return function(getattr(self, repo_attr), *args, **kwargs)

    return method


class Store:
    """A DuckDB database plus its content-addressed image folder.

    Args:
        db_path: the DuckDB file, or ``":memory:"`` (tests).
        image_dir: where original image bytes are kept; required for ``":memory:"``.
        read_only: open without write access (several read-only processes may share a file that no writer holds).
    """

    def __init__(self, db_path: str | Path, *, image_dir: str | Path | None = None, read_only: bool = False):
        self._db = Database(db_path, image_dir=image_dir, read_only=read_only)
        self.db_path = self._db.db_path
        self.image_dir = self._db.image_dir
        self.read_only = self._db.read_only
        self.samples = SampleRepository(self._db)
        self.cells = CellRepository(self._db)
        self.reviews = ReviewRepository(self._db)
        self.predictions = PredictionRepository(self._db)
        self.manual_counts = ManualCountRepository(self._db)
        self.reports = ReportRepository(self._db)
        self.users = UserRepository(self._db)
        self.models = ModelRepository(self._db)
        self.jobs = JobRepository(self._db)
        self.studies = StudyRepository(self._db)
        self.audit = AuditRepository(self._db)

    @classmethod
    def from_settings(cls, settings: Any = None) -> Store:
        """Open the store named by :class:`phenotyping.settings.Settings`."""
        from phenotyping.settings import get_settings

        s = settings or get_settings()
        return cls(s.db_path, image_dir=s.image_dir())

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (tests use it to tamper with rows)."""
        return self._db.cursor()

    schema_version = _delegate("_db", Database.schema_version)
    ensure_unlocked = _delegate("_db", Database.ensure_unlocked)

    # -- audit
    record_event = _delegate("audit", AuditRepository.record_event)
    list_audit = _delegate("audit", AuditRepository.list)
    verify_audit_chain = _delegate("audit", AuditRepository.verify_chain)
    verify_audit = _delegate("audit", AuditRepository.verify)
    audit_head = _delegate("audit", AuditRepository.head)

    # -- samples
    create_sample = _delegate("samples", SampleRepository.create)
    get_sample = _delegate("samples", SampleRepository.get)
    sample_exists = _delegate("samples", SampleRepository.exists)
    list_samples = _delegate("samples", SampleRepository.list)
    set_sample_status = _delegate("samples", SampleRepository.set_status)
    update_sample = _delegate("samples", SampleRepository.update)
    set_analysis_model = _delegate("samples", SampleRepository.set_analysis_model)
    analysis_model = _delegate("samples", SampleRepository.analysis_model)

    # -- images and cells
    put_blob = _delegate("cells", CellRepository.put_blob)
    put_pack = _delegate("cells", CellRepository.put_pack)
    sync_blobs = _delegate("cells", CellRepository.sync_blobs)
    read_blob = _delegate("cells", CellRepository.read_blob)
    read_cell_bytes = _delegate("cells", CellRepository.read_bytes)
    known_hashes = _delegate("cells", CellRepository.known_hashes)
    known_cell_keys = _delegate("cells", CellRepository.known_keys)
    sample_channel_count = _delegate("cells", CellRepository.channel_count)
    add_cells = _delegate("cells", CellRepository.add)
    list_cells = _delegate("cells", CellRepository.list)
    count_cells = _delegate("cells", CellRepository.count)
    get_cell = _delegate("cells", CellRepository.get)
    set_qc = _delegate("cells", CellRepository.set_qc)

    # -- reviews
    reclassify = _delegate("reviews", ReviewRepository.reclassify)
    list_review_actions = _delegate("reviews", ReviewRepository.list_actions)

    # -- predictions
    add_predictions = _delegate("predictions", PredictionRepository.add)
    predicted_cell_ids = _delegate("predictions", PredictionRepository.cell_ids)
    list_predictions = _delegate("predictions", PredictionRepository.list)
    prediction_versions = _delegate("predictions", PredictionRepository.versions)
    delete_predictions = _delegate("predictions", PredictionRepository.delete)
    result_counts = _delegate("predictions", PredictionRepository.result_counts)
    result_markers = _delegate("predictions", PredictionRepository.result_markers)
    counted_probabilities = _delegate("predictions", PredictionRepository.counted_probabilities)
    result_page = _delegate("predictions", PredictionRepository.result_page)
    save_domain_check = _delegate("predictions", PredictionRepository.save_domain_check)
    domain_check = _delegate("predictions", PredictionRepository.domain_check)

    # -- manual counts
    set_manual_counts = _delegate("manual_counts", ManualCountRepository.set)
    get_manual_counts = _delegate("manual_counts", ManualCountRepository.get)
    samples_with_manual_counts = _delegate("manual_counts", ManualCountRepository.sample_ids)

    # -- reports
    add_report_version = _delegate("reports", ReportRepository.add_version)
    list_report_versions = _delegate("reports", ReportRepository.list_versions)
    get_report_version = _delegate("reports", ReportRepository.get_version)
    report_pdf_path = _delegate("reports", ReportRepository.pdf_path)
    mark_report_signed = _delegate("reports", ReportRepository.mark_signed)
    signed_lock = _delegate("reports", ReportRepository.signed_lock)

    # -- users
    create_user = _delegate("users", UserRepository.create)
    get_user = _delegate("users", UserRepository.get)
    list_users = _delegate("users", UserRepository.list)
    count_users = _delegate("users", UserRepository.count)
    update_user = _delegate("users", UserRepository.update)

    # -- models
    register_model = _delegate("models", ModelRepository.register)
    set_model_usable = _delegate("models", ModelRepository.set_usable)
    list_models = _delegate("models", ModelRepository.list)

    # -- jobs
    create_job = _delegate("jobs", JobRepository.create)
    update_job = _delegate("jobs", JobRepository.update)
    get_job = _delegate("jobs", JobRepository.get)
    list_jobs = _delegate("jobs", JobRepository.list)
    fail_orphaned_jobs = _delegate("jobs", JobRepository.fail_orphaned)

    # -- studies
    save_study = _delegate("studies", StudyRepository.save)
    get_study = _delegate("studies", StudyRepository.get)
    list_studies = _delegate("studies", StudyRepository.list)


for _name, _method in vars(Store).items():  # help() and tracebacks show the Store name, not the repository's
    if hasattr(_method, "__wrapped__"):
        _method.__name__, _method.__qualname__ = _name, f"Store.{_name}"
