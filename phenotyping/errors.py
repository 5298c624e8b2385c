"""The project's own error types. Each message says what was wrong and how to fix it."""


class PhenotypingError(Exception):
    """Base class for errors a user can act on."""


class StoreError(PhenotypingError):
    """The database could not be opened or a write failed."""


class DatabaseInUseError(StoreError):
    """Another process holds the DuckDB file open for writing."""


class NotFoundError(PhenotypingError, KeyError):
    """A sample, cell, model or report that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ImageError(PhenotypingError, ValueError):
    """One file could not be used as a cell image."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class IngestError(PhenotypingError, ValueError):
    """A whole image set could not be used."""


class SampleLocked(PhenotypingError):
    """A change that would alter the results of a sample whose latest report version is signed."""
