"""The fast TIFF path returns exactly what tifffile returns, or declines."""

from __future__ import annotations

import glob
import io
import itertools

import numpy as np
import pytest
import tifffile

from phenotyping.ingest._fasttiff import read_simple_tiff
from phenotyping.ingest._image import _read_tiff
from tests.conftest import SHARED_DATA

LIMITS = {"max_pixels": 4_000_000, "max_voxels": 64_000_000}


def reference(data: bytes) -> np.ndarray:
    return _read_tiff(data, "ref.tif", LIMITS["max_pixels"], LIMITS["max_voxels"])


@pytest.mark.parametrize(
    "dtype, channels, compression, predictor, byteorder, rows",
    [combo for combo in itertools.product(
        [np.uint8, np.uint16, np.float32], [1, 2, 4], [None, "zlib"], [False, True], ["<", ">"], [None, 7])
     if not (combo[0] == np.float32 and combo[3]) and not (combo[3] and combo[2] is None)],
)
def test_matches_tifffile(dtype, channels, compression, predictor, byteorder, rows):
    rng = np.random.default_rng(channels)
    arr = (rng.random((channels, 23, 31)) * (200 if dtype == np.uint8 else 60000)).astype(dtype)
    buf = io.BytesIO()
    kwargs = {"rowsperstrip": rows} if rows else {}
    with tifffile.TiffWriter(buf, byteorder=byteorder) as tw:
        tw.write(arr, photometric="minisblack", compression=compression,
                 predictor=predictor or None, metadata={"axes": "CYX"}, **kwargs)
    data = buf.getvalue()
    fast = read_simple_tiff(data, **LIMITS)
    assert fast is not None, "the fast path should accept this simple TIFF"
    ref = reference(data)
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    np.testing.assert_array_equal(fast, ref)


def test_declines_what_it_does_not_handle():
    stack = np.zeros((3, 2, 16, 16), np.uint16)
    for kwargs in ({"imagej": True, "metadata": {"axes": "ZCYX"}},
                   {"ome": True, "metadata": {"axes": "ZCYX"}}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, stack, **kwargs)
        assert read_simple_tiff(buf.getvalue(), **LIMITS) is None
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64), np.uint8), tile=(16, 16))
    assert read_simple_tiff(buf.getvalue(), **LIMITS) is None
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    assert read_simple_tiff(buf.getvalue(), **LIMITS) is None


def test_malformed_input_declines_without_raising():
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((2, 16, 16), np.uint16), compression="zlib", photometric="minisblack")
    data = buf.getvalue()
    for cut in (8, 20, len(data) // 2, len(data) - 3):
        assert read_simple_tiff(data[:cut], **LIMITS) is None


def test_real_jurkat_files_match():
    files = sorted(glob.glob(str(SHARED_DATA / "ifc-jurkat-labelfree" / "cells" / "*" / "*.tif")))[::50]
    if not files:
        pytest.skip("../shared/data/ifc-jurkat-labelfree is absent")
    for f in files:
        data = open(f, "rb").read()
        fast = read_simple_tiff(data, **LIMITS)
        assert fast is not None
        np.testing.assert_array_equal(fast, reference(data))


@pytest.mark.parametrize("compression", ["lzw", "jpeg"])
def test_declines_lzw_and_jpeg_so_tifffile_decodes_them(compression):
    from phenotyping.ingest import read_image

    arr = np.moveaxis((np.random.default_rng(3).random((3, 24, 24)) * 200).astype(np.uint8), 0, -1)
    buf = io.BytesIO()
    if compression == "jpeg":
        tifffile.imwrite(buf, arr, photometric="rgb", compression="jpeg")
    else:
        tifffile.imwrite(buf, np.moveaxis(arr, -1, 0), photometric="minisblack", compression="lzw",
                         metadata={"axes": "CYX"})
    data = buf.getvalue()
    assert read_simple_tiff(data, **LIMITS) is None
    out = read_image(data, f"{compression}.tif")
    np.testing.assert_array_equal(out, reference(data))
    assert out.shape == (3, 24, 24)
    if compression == "lzw":
        np.testing.assert_array_equal(out, np.moveaxis(arr, -1, 0))
