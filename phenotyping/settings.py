"""Runtime settings: one object, read once, from the environment (prefix ``LEUKO_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything that differs between installations.

    Environment variables use the prefix ``LEUKO_`` (``LEUKO_DB_PATH=/data/lab.duckdb``).
    """

    model_config = SettingsConfigDict(env_prefix="LEUKO_", env_file=".env", extra="ignore")

    db_path: Path = Field(PROJECT_ROOT / "var" / "leuko.duckdb", description="DuckDB file; ':memory:' for tests")
    data_dir: Path | None = Field(None, description="content-addressed image store; default: beside the DB file")
    model_dir: Path = Field(PROJECT_ROOT / "models",
                            description="folder of model folders (checkpoint + card); trained models are written here")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_upload_mb: int = Field(200, ge=1, description="per-file limit of the image uploader (MB)")
    max_image_pixels: int = Field(4_000_000, ge=1, description="pixels per plane above which an image is refused")
    max_image_bytes: int = Field(64 * 1024 * 1024, ge=1, description="bytes per file above which it is refused")
    max_files_per_set: int = Field(200_000, ge=1, description="files (zip entries, manifest or BSCCM index rows) above "
                                                            "which a set is refused before any file is read")
    llm_model: str | None = Field(None, description="litellm route, e.g. 'openai/gpt-4o-mini'; None = template draft")
    llm_timeout_s: float = 30.0
    lab_name: str = Field("Research haematology laboratory", description="laboratory name printed on reports")
    lab_id: str = Field("LAB-001", description="laboratory identifier; report ids are '<lab_id>-<sample id>'")
    lab_address: str | None = Field(None, description="postal address printed on reports and in the FHIR export "
                                                      "(lines separated by ', ' or newlines); None = reports say "
                                                      "it is not configured")
    lab_contact: str | None = Field(None, description="telephone and/or e-mail for report enquiries, e.g. "
                                                      "'+44 20 7946 0000, haem.lab@example.org'; None = reports say "
                                                      "it is not configured")
    lab_ca: Path | None = Field(
        None, description="the lab CA's certificate (PEM/DER; the ca.pem of `python -m reports keys init-ca`): signer "
                          "keys must be issued by it to be installed or to sign, and `reports verify` trusts it; "
                          "None = no key can be installed and verify needs --trust")
    reference_intervals: Path | None = Field(
        None, description="JSON or CSV file of the lab's reference intervals (%) per specimen and class "
                          "(see reports/reference.py); None = reports say no interval is configured")
    agreement_decision_levels: dict[str, list[float]] = Field(
        default_factory=dict,
        description="medical decision levels per class, in the values' units (% for differentials), at which "
                    "method comparisons report the predicted bias (CLSI EP09); key '*' for every class not named. "
                    "Environment: JSON, e.g. LEUKO_AGREEMENT_DECISION_LEVELS='{\"neutrophil\": [40, 70]}'")
    agreement_allowable: dict[str, float] = Field(
        default_factory=dict,
        description="allowable difference per class, in the units of the comparison's measure (percentage points "
                    "for 'absolute'; a factor above 1 for 'ratio'): a class is accepted when its bias and both "
                    "limits of agreement lie within it; key '*' for every class not named")
    login_max_failures: int = Field(5, ge=1, description="consecutive failed logins of one username after which it "
                                                         "is locked")
    login_lockout_min: float = Field(15.0, gt=0, description="minutes of the first lock; each further lock in a row "
                                                             "lasts twice as long, up to login_lockout_max_min, "
                                                             "unless an administrator unlocks the account")
    login_lockout_max_min: float = Field(240.0, gt=0, description="the longest lock (minutes)")
    login_delay_s: float = Field(1.0, ge=0, description="seconds a username (and an app session) must wait after its "
                                                        "second failed login in a row, doubling with each further "
                                                        "one; 0 = no delay")
    warm_up_models: bool = Field(True, description="load the registered models in a background thread when the app "
                                                  "starts, so the first analysis does not wait for torch "
                                                  "(LEUKO_WARM_UP_MODELS; the tests turn it off: CPython 3.11's "
                                                  "AST constructor is not thread-safe, gh-106905, and the warm-up's "
                                                  "imports race AppTest's page parsing)")
    job_worker: Literal["process", "thread"] = Field(
        "process", description="where the app's prediction jobs decode, check and predict cells "
                               "(LEUKO_JOB_WORKER): process = one analysis worker process per server, which the "
                               "screens' reruns cannot slow down (phenotyping.jobs.worker); thread = a thread of "
                               "the server process")
    job_poll_s: float = Field(1.0, ge=0.1, le=10.0,
                              description="seconds between two refreshes of the Analyse screen's job panel while "
                                          "a job runs (LEUKO_JOB_POLL_S); each refresh is a rerun of the panel in "
                                          "the server and a redraw in the browser")
    idle_timeout_min: float = Field(30.0, gt=0, description="minutes without interaction after which the app logs "
                                                            "a session out (LEUKO_IDLE_TIMEOUT_MIN); also the "
                                                            "lifetime of the session cookie that keeps a login "
                                                            "across reloads")
    session_secret: SecretStr | None = Field(
        None, description="HMAC key (at least 32 characters) signing the app's session cookies "
                          "(LEUKO_SESSION_SECRET); None = a random key in the file <db>.session-key beside the "
                          "database, created 0600 on first use. Changing it logs every browser out")

    def model_search_path(self) -> list[Path]:
        """Folders holding model folders: the installation's model_dir, then the models shipped with the code."""
        shipped = PROJECT_ROOT / "models"
        dirs = [self.model_dir]
        if shipped.resolve() != self.model_dir.resolve():
            dirs.append(shipped)
        return dirs

    def reports_dir(self) -> Path:
        """Where rendered and signed report PDFs are kept (beside the DB file)."""
        if self.data_dir is not None:
            return self.data_dir.parent / (self.data_dir.name + "-reports")
        if str(self.db_path) == ":memory:":
            raise ValueError("an in-memory database needs an explicit data_dir")
        return self.db_path.parent / (self.db_path.stem + "-reports")

    def image_dir(self) -> Path:
        """Where cell images are kept (content-addressed)."""
        if self.data_dir is not None:
            return self.data_dir
        if str(self.db_path) == ":memory:":
            raise ValueError("an in-memory database needs an explicit data_dir for its images")
        return self.db_path.parent / (self.db_path.stem + "-images")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
