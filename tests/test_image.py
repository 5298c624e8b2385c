"""Decoding every supported format into channel-first arrays, and refusing bad files with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from phenotyping.errors import ImageError
from phenotyping.ingest import read_image
from tests.conftest import cell_array, encode


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_formats_round_trip_8bit(fmt, channels):
    arr = cell_array(c=channels)
    out = read_image(encode(arr, fmt), f"cell.{fmt}")
    assert out.shape == (channels, 32, 32)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_jpeg_decodes_close_to_original():
    arr = cell_array(c=3)
    out = read_image(encode(arr, "jpeg"), "cell.jpg")
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 12


def test_png_16bit_keeps_dtype_and_values():
    arr = cell_array(dtype=np.uint16)
    out = read_image(encode(arr, "png"), "cell16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


def test_tiff_16bit_multichannel_with_metadata():
    arr = cell_array(c=4, dtype=np.uint16)
    out = read_image(encode(arr, "tiff"), "cell.tif")
    assert out.shape == (4, 32, 32) and out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


def test_plain_multipage_tiff_pages_become_channels():
    arr = cell_array(c=3, dtype=np.uint16)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for page in arr:
            tw.write(page, metadata=None)
    out = read_image(buf.getvalue(), "pages.tif")
    assert out.shape == (3, 32, 32)
    np.testing.assert_array_equal(out, arr)


def test_imagej_hyperstack_gives_zstack_axes():
    z, c = 5, 2
    stack = np.stack([cell_array(c=c, dtype=np.uint16, seed=i) for i in range(z)])  # (Z, C, Y, X)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, imagej=True, metadata={"axes": "ZCYX"})
    out = read_image(buf.getvalue(), "stack.tif")
    assert out.shape == (c, z, 32, 32)
    np.testing.assert_array_equal(out, np.transpose(stack, (1, 0, 2, 3)))


def test_ome_tiff_axes_are_read():
    stack = np.stack([cell_array(c=2, dtype=np.uint16, seed=i) for i in range(3)])  # (Z, C, Y, X)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, ome=True, metadata={"axes": "ZCYX"})
    out = read_image(buf.getvalue(), "stack.ome.tif")
    assert out.shape == (2, 3, 32, 32)


def test_float_tiff_is_float32():
    arr = cell_array().astype(np.float64) / 255
    out = read_image(encode(arr, "tiff"), "phase.tif")
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode PNG"),
        (b"II*\x00" + b"\xff" * 40, "TIFF"),
    ],
)
def test_bad_bytes_are_refused_with_reason(data, reason):
    with pytest.raises(ImageError) as e:
        read_image(data, "bad.file")
    assert e.value.file == "bad.file"
    assert reason in e.value.reason


def test_truncated_png_is_refused():
    data = encode(cell_array(h=64, w=64), "png")
    with pytest.raises(ImageError, match="cannot decode PNG"):
        read_image(data[: len(data) // 2], "cut.png")


def test_50_megapixel_bomb_is_refused_before_decoding():
    im = Image.new("1", (7100, 7100))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000  # tiny file, huge image
    with pytest.raises(ImageError, match="megapixels"):
        read_image(buf.getvalue(), "bomb.png")


def test_tiff_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8000, 8000), np.uint8), compression="zlib")
    with pytest.raises(ImageError, match="megapixels"):
        read_image(buf.getvalue(), "bomb.tif")


def test_tiny_image_is_refused():
    with pytest.raises(ImageError, match="at least"):
        read_image(encode(np.zeros((1, 2, 2), np.uint8), "png"), "dot.png")


def test_truncated_png_is_refused_even_after_weasyprint_import():
    import weasyprint  # noqa: F401  (sets PIL's LOAD_TRUNCATED_IMAGES = True process-wide)
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    data = encode(cell_array(h=64, w=64), "png")
    with pytest.raises(ImageError, match="cannot decode PNG"):
        read_image(data[: len(data) // 2], "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for WeasyPrint


def test_truncated_jpeg_and_bmp_are_refused():
    for fmt, what in (("jpeg", "JPEG"), ("bmp", "BMP")):
        data = encode(cell_array(h=64, w=64, c=3), fmt)
        with pytest.raises(ImageError, match=f"cannot decode {what}"):
            read_image(data[: len(data) // 2], f"cut.{fmt}")


def _png16(hwc: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.png_encode(np.ascontiguousarray(hwc))


def test_png_16bit_rgb_keeps_16_bits():
    rgb = np.moveaxis(cell_array(c=3, dtype=np.uint16), 0, -1)  # (H, W, 3), values up to 60000
    data = _png16(rgb)
    assert (data[24], data[25]) == (16, 2)  # 16-bit truecolour, which Pillow would reduce to 8 bits
    out = read_image(data, "rgb16.png")
    assert out.dtype == np.uint16 and out.shape == (3, 32, 32)
    np.testing.assert_array_equal(out, np.moveaxis(rgb, -1, 0))
    with pytest.raises(ImageError, match="cannot decode PNG"):
        read_image(data[: len(data) // 2], "rgb16-cut.png")


@pytest.mark.parametrize("colour", ["grey", "rgb"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_constant_alpha_is_dropped_and_noted(colour, dtype):
    c = 1 if colour == "grey" else 3
    img = np.moveaxis(cell_array(c=c, dtype=dtype), 0, -1)
    alpha = np.full(img.shape[:2] + (1,), 128, dtype)
    hwa = np.concatenate([img, alpha], axis=-1)
    if dtype == np.uint16:
        data = _png16(hwa)
    else:
        buf = io.BytesIO()
        Image.fromarray(hwa, "LA" if c == 1 else "RGBA").save(buf, format="PNG")
        data = buf.getvalue()
    notes: list[str] = []
    out = read_image(data, "alpha.png", notes=notes)
    assert out.shape == (c, 32, 32) and out.dtype == dtype
    np.testing.assert_array_equal(out, np.moveaxis(img, -1, 0))
    assert notes == ["alpha channel dropped (the same value, 128, everywhere)"]


def test_varying_alpha_is_refused():
    hwa = np.zeros((32, 32, 2), np.uint8)
    hwa[..., 0] = 100
    hwa[8:24, 8:24, 1] = 255  # a mask, not an intensity
    buf = io.BytesIO()
    Image.fromarray(hwa, "LA").save(buf, format="PNG")
    with pytest.raises(ImageError, match=r"alpha \(transparency\) channel varies \(0 to 255\)"):
        read_image(buf.getvalue(), "masked.png")


@pytest.mark.parametrize("shapes", [((32, 32), (16, 16)), ((32, 32), (16, 16), (32, 32))])
def test_tiff_pages_of_different_sizes_are_refused_naming_them(shapes):
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for shape in shapes:
            tw.write(np.zeros(shape, np.uint16), metadata=None)
    with pytest.raises(ImageError) as e:  # tifffile alone would return page 1 (and 3) and drop page 2
        read_image(buf.getvalue(), "pages.tif")
    assert "differ in size" in e.value.reason
    assert "page 1: 32×32 uint16" in e.value.reason and "page 2: 16×16 uint16" in e.value.reason


def test_tiff_with_separate_images_is_refused():
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:  # two tifffile-shaped series: only the first would be read
        tw.write(np.zeros((32, 32), np.uint16))
        tw.write(np.ones((32, 32), np.uint16))
    with pytest.raises(ImageError, match="2 separate images"):
        read_image(buf.getvalue(), "two.tif")


@pytest.mark.parametrize("compression", ["lzw", "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["pages", "imagej"])
def test_compressed_tiff_round_trip(compression, dtype, channels, layout):
    """LZW is what ImageJ/Fiji writes on 'Save As TIFF' with compression; Deflate is the other common lossless."""
    arr = cell_array(c=channels, dtype=dtype, seed=channels)
    buf = io.BytesIO()
    if layout == "imagej":
        tifffile.imwrite(buf, arr, imagej=True, compression=compression, metadata={"axes": "CYX"})
    else:
        tifffile.imwrite(buf, arr, photometric="minisblack", compression=compression, predictor=True,
                         metadata={"axes": "CYX"})
    out = read_image(buf.getvalue(), f"cell-{compression}.tif")
    assert out.dtype == dtype and out.shape == (channels, 32, 32)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_compressed_tiff_decodes():
    rgb = np.moveaxis(cell_array(c=3), 0, -1)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb", compression="jpeg")
    out = read_image(buf.getvalue(), "jpeg.tif")
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.moveaxis(rgb, -1, 0).astype(int)).mean() < 12
