"""Decode one single-cell image file into a channel-first array.

Supported: PNG, JPEG, BMP and TIFF (8/16-bit, float; single- or multi-channel; multi-page TIFF as channels; axes from
OME or ImageJ metadata where present, so a z-stack becomes ``(C, Z, H, W)``; LZW, Deflate and JPEG-compressed TIFF
through ``imagecodecs``).

16-bit colour and grey+alpha PNGs are decoded by libpng through ``imagecodecs`` (Pillow would reduce them to 8 bits).
An alpha channel that is the same everywhere carries no image information and is dropped (the caller is told through
``notes``); one that varies is refused, because a mask is not an intensity channel.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from phenotyping.errors import ImageError
from phenotyping.ingest._fasttiff import read_simple_tiff
from phenotyping.ingest._headers import jpeg2000_size, jpeg_size, png_size

# Defaults; callers pass the installation's limits from Settings.
MAX_PLANE_PIXELS = 4_000_000
MAX_TOTAL_VOXELS = 64_000_000
MIN_SIDE = 4
MAX_TIFF_PAGES = 4096
_PIL_FLAG_LOCK = threading.Lock()
# TIFF compressions whose decoder writes into a buffer of the strip's or tile's size (tifffile passes that size), so
# the chunk size the tags declare bounds the memory they use
_BOUNDED_TIFF_CODECS = {1: "none", 5: "LZW", 8: "Deflate", 32946: "Deflate", 32773: "PackBits", 34925: "LZMA",
                        50000: "Zstandard"}
# TIFF compressions whose streams carry a size of their own, which the decoder allocates: read before decoding
_SIZED_TIFF_CODECS = {7: ("JPEG", jpeg_size), 33003: ("JPEG 2000", jpeg2000_size), 33004: ("JPEG 2000", jpeg2000_size),
                      33005: ("JPEG 2000", jpeg2000_size), 34712: ("JPEG 2000", jpeg2000_size),
                      34933: ("PNG", png_size)}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def sniff_format(data: bytes) -> str | None:
    """The image format from the file's first bytes ('png', 'jpeg', 'bmp', 'tiff'), or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _normalise_dtype(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16, np.float32):
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)
    return arr.astype(np.float32)


def _check_plane(name: str, h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ImageError(name, f"image is {w}×{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                               f"{max_pixels / 1e6:.1f} (a single-cell image is far smaller; possible decompression bomb)")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(name, f"image is only {w}×{h} pixels; a cell image needs at least {MIN_SIDE}×{MIN_SIDE}")


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Refuse truncated files whatever another library set: WeasyPrint sets PIL's process-wide
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` when imported, which would silently pad a cut-off cell image."""
    from PIL import ImageFile

    with _PIL_FLAG_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


_PNG_COLOUR_TYPES = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}


def _png_16bit_colour(data: bytes) -> bool:
    """True for a 16-bit RGB, grey+alpha or RGBA PNG (IHDR bit depth at byte 24, colour type at byte 25)."""
    return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in _PNG_COLOUR_TYPES


def _decode_png16(data: bytes, name: str) -> np.ndarray:
    try:
        import imagecodecs
    except ImportError as e:
        raise ImageError(name, "16-bit colour PNG needs the 'imagecodecs' package to keep its 16 bits "
                               "(pip install -r requirements.txt)") from e
    try:
        arr = imagecodecs.png_decode(data)
    except Exception as e:  # imagecodecs.PngError for corrupt or truncated data
        raise ImageError(name, f"cannot decode PNG: {e}") from e
    if arr.dtype != np.uint16 or arr.ndim != 3:
        raise ImageError(name, f"16-bit PNG decoded as {arr.dtype} {arr.shape}; expected 16-bit (H, W, C)")
    return arr


def _drop_alpha(arr: np.ndarray, name: str, notes: list[str] | None) -> np.ndarray:
    """``arr`` is (H, W, C) whose last channel is alpha: drop it when constant, refuse the file when it varies."""
    alpha = arr[..., -1]
    lo, hi = int(alpha.min()), int(alpha.max())
    if lo != hi:
        raise ImageError(name, f"its alpha (transparency) channel varies ({lo} to {hi}); a cell image's channels "
                               "must all be intensities: export the image without transparency (or the mask as a "
                               "separate file)")
    if notes is not None:
        notes.append(f"alpha channel dropped (the same value, {lo}, everywhere)")
    return arr[..., :-1]


def _read_pil(data: bytes, name: str, fmt: str, max_pixels: int, notes: list[str] | None = None) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings(), _strict_truncation():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            _check_plane(name, h, w, max_pixels)
            if fmt == "png" and _png_16bit_colour(data):
                arr16 = _decode_png16(data, name)
                if data[25] in (4, 6):
                    arr16 = _drop_alpha(arr16, name, notes)
                return _normalise_dtype(np.ascontiguousarray(np.moveaxis(arr16, -1, 0)))
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"refused as a possible decompression bomb: {e}") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError… for corrupt data
        raise ImageError(name, f"cannot decode {fmt.upper()}: {e}") from e
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("La", "RGBa"):  # premultiplied alpha
        im = im.convert("LA" if mode == "La" else "RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L"):
        arr = arr.astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        if im.mode in ("LA", "RGBA"):
            arr = _drop_alpha(arr, name, notes)
        arr = np.moveaxis(arr, -1, 0)
    return _normalise_dtype(np.ascontiguousarray(arr))


def _read_tiff(data: bytes, name: str, max_pixels: int, max_voxels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if not tf.series:
                raise ImageError(name, "TIFF holds no image data")
            n_pages = len(tf.pages)
            if n_pages > MAX_TIFF_PAGES:
                raise ImageError(name, f"TIFF has {n_pages} pages; a cell image has at most {MAX_TIFF_PAGES} "
                                       "(channels × z-planes)")
            # tifffile reads the first series only and may leave pages out of it (a page of another size):
            # a cell's pages must all belong to one image, or the file is refused
            if len(tf.series) > 1 or len(tf.series[0].pages) != n_pages:
                raise ImageError(name, _several_series_reason(tf))
            series = tf.series[0]
            axes = series.axes.upper()
            shape = tuple(int(s) for s in series.shape)
            if "Y" not in axes or "X" not in axes:
                raise ImageError(name, f"TIFF axes {axes!r} have no Y and X")
            _check_plane(name, shape[axes.index("Y")], shape[axes.index("X")], max_pixels)
            total = int(np.prod(shape, dtype=np.int64))
            if total > max_voxels:
                raise ImageError(name, f"TIFF holds {total / 1e6:.1f} M values, above the limit of "
                                       f"{max_voxels / 1e6:.0f} M for one cell")
            for page in tf.pages:
                _check_tiff_chunks(page, data, name, max_pixels)
            arr = series.asarray(maxworkers=1)  # one chunk buffer at a time
    except ImageError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error… for corrupt data
        raise ImageError(name, f"cannot decode TIFF: {e}") from e
    return _tiff_to_cfirst(arr, axes, name)


def _round16(n: int) -> int:
    return -(-n // 16) * 16


def _check_tiff_chunks(page, data: bytes, name: str, max_pixels: int) -> None:
    """Refuse, before decoding, a TIFF page whose codec is not bounded by its strip or tile size, whose tiles are
    larger than the image needs (tile sides are multiples of 16), or whose JPEG/JPEG 2000/PNG streams declare more
    pixels than the strip or tile they fill (the codec would allocate the declared size)."""
    kf = page.keyframe  # a TiffFrame shares its key page's tags
    code = int(kf.compression)
    if code not in _BOUNDED_TIFF_CODECS and code not in _SIZED_TIFF_CODECS:
        codec = getattr(kf.compression, "name", str(code))
        raise ImageError(name, f"TIFF compression {codec} ({code}) is not accepted for cell images; save the image "
                               "uncompressed or with LZW, Deflate, Zstandard, JPEG or JPEG 2000")
    if kf.is_tiled:
        chunk_h, chunk_w = int(kf.tilelength), int(kf.tilewidth)
        if chunk_h > _round16(kf.imagelength) or chunk_w > _round16(kf.imagewidth) or kf.tiledepth > kf.imagedepth:
            raise ImageError(name, f"TIFF tiles of {chunk_w}×{chunk_h} are larger than the {kf.imagewidth}×"
                                   f"{kf.imagelength} image they hold (a malformed or hostile file); save it again")
    else:
        chunk_h, chunk_w = int(kf.rowsperstrip) or int(kf.imagelength), int(kf.imagewidth)
    if chunk_h * chunk_w > max_pixels:
        raise ImageError(name, f"TIFF strips or tiles of {chunk_w}×{chunk_h} pixels are above the limit of "
                               f"{max_pixels / 1e6:.1f} megapixels")
    if code not in _SIZED_TIFF_CODECS:
        return
    codec, size_of = _SIZED_TIFF_CODECS[code]
    for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts), start=1):
        if not count:
            continue  # an empty chunk: tifffile fills it, nothing is decoded
        try:
            h, w = size_of(data[offset:offset + count])
        except (ValueError, struct.error) as e:
            raise ImageError(name, f"TIFF {codec} chunk {i} is unreadable: {e}") from e
        if not (0 < h <= chunk_h and 0 < w <= chunk_w):
            raise ImageError(name, f"TIFF {codec} chunk {i} declares {w}×{h} pixels for a {chunk_w}×{chunk_h} strip "
                                   f"or tile (possible decompression bomb); refused before decoding")


def _several_series_reason(tf) -> str:
    """Why a TIFF whose pages do not form one image is refused, naming the page shapes."""
    n_pages = len(tf.pages)
    groups: list[tuple[str, list[int]]] = []  # (shape, 1-based page numbers), in page order
    for i, page in enumerate(tf.pages[:64], start=1):
        shape = "×".join(str(int(x)) for x in page.shape) + f" {page.dtype}"
        if groups and groups[-1][0] == shape:
            groups[-1][1].append(i)
        else:
            groups.append((shape, [i]))
    described = ", ".join(f"page{'s' if len(p) > 1 else ''} {p[0]}{f'–{p[-1]}' if len(p) > 1 else ''}: {shape}"
                          for shape, p in groups)
    if n_pages > 64:
        described += f", … ({n_pages} pages)"
    if len({shape for shape, _ in groups}) > 1:
        return (f"TIFF pages differ in size or type ({described}); pages are read as the channels of one cell, so "
                "they must all have the same height, width and bit depth: export the cell's channels at one size")
    return (f"TIFF holds {max(len(tf.series), 2)} separate images ({described}); one file must hold one cell: "
            "save its channels as one image (pages or a C axis)")


def _tiff_to_cfirst(arr: np.ndarray, axes: str, name: str) -> np.ndarray:
    """Rearrange a TIFF series to (C, H, W) or (C, Z, H, W). Unknown page axes (I, Q, T…) count as channels."""
    # squeeze singleton axes other than Y/X
    keep = [i for i, a in enumerate(axes) if a in "YX" or arr.shape[i] > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    channel_axes = [a for a in axes if a in "CS"]
    other = [a for a in axes if a not in "CSZYX"]
    if other:
        if len(other) > 1 or channel_axes:
            raise ImageError(name, f"TIFF axes {axes!r}: cannot tell channels from {''.join(other)!r}; "
                                   "save the cell as channels (C), z-planes (Z), Y and X")
        axes = axes.replace(other[0], "C")  # plain multi-page TIFF: each page is a channel
        channel_axes = ["C"]
    order = [a for a in "CSZYX" if a in axes]
    arr = np.transpose(arr, [axes.index(a) for a in order])
    shape = dict(zip(order, arr.shape))
    c = shape.get("C", 1) * shape.get("S", 1)
    if "Z" in shape:
        arr = arr.reshape(c, shape["Z"], shape["Y"], shape["X"])
    else:
        arr = arr.reshape(c, shape["Y"], shape["X"])
    return _normalise_dtype(np.ascontiguousarray(arr))


def read_image(
    data: bytes,
    name: str,
    *,
    max_pixels: int = MAX_PLANE_PIXELS,
    max_voxels: int = MAX_TOTAL_VOXELS,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Decode one image file.

    Args:
        data: the file's bytes.
        name: the file's name, used in error messages.
        max_pixels: largest accepted plane (height × width).
        max_voxels: largest accepted total number of values (channels × z × height × width).
        notes: when given, a sentence is appended for each change made while decoding that a user should know
            about (a constant alpha channel dropped).

    Returns:
        ``(C, H, W)`` for a 2D image or ``(C, Z, H, W)`` for a z-stack, dtype uint8, uint16 or float32.

    Raises:
        ImageError: empty, not an image, corrupt or truncated, too large or too small.
    """
    if len(data) == 0:
        raise ImageError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(name, "not an image: the file is not PNG, JPEG, BMP or TIFF")
    if fmt == "tiff":
        arr = read_simple_tiff(data, max_pixels=max_pixels, max_voxels=max_voxels)
        if arr is None:
            arr = _read_tiff(data, name, max_pixels, max_voxels)
        else:
            _check_plane(name, arr.shape[-2], arr.shape[-1], max_pixels)
    else:
        arr = _read_pil(data, name, fmt, max_pixels, notes)
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        raise ImageError(name, "image contains NaN or infinite values")
    return arr
