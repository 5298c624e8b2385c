"""Domain models shared by the store, the CLI, the reports and the app.

Times are timezone-aware UTC. Percentages are 0–100. Image shapes are channel-first: ``(C, H, W)`` for 2D cells and
``(C, Z, H, W)`` for z-stacks.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SAMPLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def require_aware(value: datetime | None, what: str) -> datetime | None:
    """``value`` unchanged when it carries a time zone (or is None); a naive time raises ValueError.

    A clock time without a zone is ambiguous on a report (local? UTC?), so it is refused rather than guessed.
    """
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{what} {value.isoformat()} has no time zone; add Z (UTC) or an offset such as +01:00, "
                         "e.g. 2026-11-30T08:15Z")
    return value


class Specimen(str, Enum):
    blood = "blood"
    balf = "balf"


class SampleStatus(str, Enum):
    new = "new"
    analysed = "analysed"
    reviewed = "reviewed"
    signed = "signed"
    amended = "amended"


class QCState(str, Enum):
    pending = "pending"  # not yet checked
    passed = "passed"
    excluded = "excluded"  # image QC failed; reason kept
    unidentified = "unidentified"  # model unsure; waits for review
    overridden = "overridden"  # image QC excluded it; a reviewer counted it anyway, with a reason (qc_reason kept)


class Role(str, Enum):
    reviewer = "reviewer"
    signer = "signer"
    admin = "admin"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, use_enum_values=False)


class Sample(_Model):
    """One specimen of one (pseudonymised) patient."""

    id: str = Field(pattern=SAMPLE_ID_PATTERN, description="lab sample id: letters, digits, '.', '_', '-'")
    specimen: Specimen
    patient_pseudonym: str = Field("", max_length=128)
    collected_at: datetime | None = Field(None, description="when the specimen was collected (timezone-aware)")
    received_at: datetime | None = Field(None, description="when the laboratory received it (timezone-aware)")
    requester: str = Field("", max_length=200, description="who ordered the test (clinician or service), as "
                                                           "printed on the report")
    status: SampleStatus = SampleStatus.new
    notes: str = Field("", max_length=4000)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = "system"

    @field_validator("patient_pseudonym", "requester")
    @classmethod
    def _no_control_chars(cls, v: str, info: ValidationInfo) -> str:
        if re.search(r"[\x00-\x1f]", v):
            raise ValueError(f"{info.field_name.replace('_', ' ')} must not contain control characters")
        return v.strip()

    @field_validator("collected_at", "received_at")
    @classmethod
    def _aware(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        return require_aware(v, info.field_name.replace("_at", " time").replace("_", " "))

    @model_validator(mode="after")
    def _received_after_collection(self) -> Sample:
        if self.collected_at and self.received_at and self.received_at < self.collected_at:
            raise ValueError(f"receipt time {self.received_at.isoformat()} is before the collection time "
                             f"{self.collected_at.isoformat()}; check both times and their time zones")
        return self


class Cell(_Model):
    """One single-cell image of a sample, as stored."""

    id: int
    sample_id: str
    cell_key: str = Field(description="cell id from the manifest, else the file's path inside the set")
    content_hash: str = Field(description="sha256 of the original file bytes")
    source_file: str
    blob_path: str = Field(description="path of the original bytes, relative to the image store")
    channels: int
    shape: tuple[int, ...]
    dtype: str
    qc_state: QCState = QCState.pending
    qc_reason: str | None = None
    reference_label: str | None = Field(None, description="label given with the set (ImageFolder or manifest)")
    targets: dict[str, float] = Field(default_factory=dict, description="continuous targets from the manifest")
    extra: dict[str, str] = Field(default_factory=dict, description="other manifest columns, kept verbatim")
    reviewed_label: str | None = Field(None, description="class set by a reviewer; overrides the prediction")


class Prediction(_Model):
    """A model's output for one cell."""

    cell_id: int
    model_id: str
    model_version: str
    predicted_class: str
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, float]
    targets: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class ManualCount(_Model):
    """A manual (cytospin) count for one class of one sample."""

    sample_id: str
    cell_type: str
    count: int | None = Field(None, ge=0)
    percent: float | None = Field(None, ge=0.0, le=100.0)
    total_counted: int | None = Field(None, ge=1)
    entered_by: str = "system"
    entered_at: datetime = Field(default_factory=utcnow)


class ReviewAction(_Model):
    """A reviewer's decision on one cell."""

    id: int
    cell_id: int
    sample_id: str
    actor: str
    at: datetime
    old_label: str | None
    new_label: str
    note: str = ""


class ReportVersion(_Model):
    """One version of a sample's report; a signed version is never rewritten."""

    sample_id: str
    version: int = Field(ge=1)
    status: Literal["draft", "preliminary", "final", "amended"]
    interpretation: str = ""
    interpretation_source: str = Field("template", description="'template' or the litellm route that drafted it")
    amends_version: int | None = None
    amendment_reason: str | None = None
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)
    signed_by: str | None = None
    signed_at: datetime | None = None
    pdf_hash: str | None = None


class User(_Model):
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,31}$")
    display_name: str = ""
    role: Role
    active: bool = True


class AuditEvent(_Model):
    """One append-only audit record: who did what to which entity, with the state before and after."""

    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    sample_id: str | None = None
    before: dict[str, Any] | list[Any] | None = None
    after: dict[str, Any] | list[Any] | None = None


class RejectedFile(_Model):
    file: str
    reason: str


class IngestResult(_Model):
    """What happened to each file of one image set (the ``ingest`` command prints this)."""

    sample_id: str
    ingested: int
    duplicates: int
    rejected: list[RejectedFile]
    notes: list[str] = Field(default_factory=list,
                             description="what decoding changed in ingested files (e.g. a constant alpha dropped), "
                                         "one line per kind with the number of files")
    cell_ids: list[int] = Field(default_factory=list, exclude=True)
