"""Image-set ingestion: decode single-cell images and bring a set (folder, zip, manifest) into a sample."""

from phenotyping.ingest._image import IMAGE_SUFFIXES, read_image, sniff_format
from phenotyping.ingest._ingest import ingest_set, read_manifest

__all__ = ["IMAGE_SUFFIXES", "ingest_set", "read_image", "read_manifest", "sniff_format"]
