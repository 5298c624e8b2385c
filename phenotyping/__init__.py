"""UI-free core of the label-free leukocyte review app: ingestion, store, models, statistics."""

__version__ = "0.1.0"
