"""Image-set ingestion: decode single-cell images and bring a set (folder, zip, manifest) into a sample; channels
derived at ingest (quantitative DPC phase, :mod:`phenotyping.ingest.qdpc`)."""

from phenotyping.ingest._derive import QdpcDerivation
from phenotyping.ingest._image import IMAGE_SUFFIXES, read_image, sniff_format
from phenotyping.ingest._ingest import ingest_set, read_manifest
from phenotyping.ingest.qdpc import OpticalSetup

__all__ = ["IMAGE_SUFFIXES", "OpticalSetup", "QdpcDerivation", "ingest_set", "read_image", "read_manifest",
           "sniff_format"]
