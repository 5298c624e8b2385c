"""Decode one single-cell image file into a channel-first array.

Supported: PNG, JPEG, BMP and TIFF (8/16-bit, float; single- or multi-channel; multi-page TIFF as channels; axes from
OME or ImageJ metadata where present, so a z-stack becomes ``(C, Z, H, W)``).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from phenotyping.errors import ImageError
from phenotyping.ingest._fasttiff import read_simple_tiff

# Defaults; callers pass the installation's limits from Settings.
MAX_PLANE_PIXELS = 4_000_000
MAX_TOTAL_VOXELS = 64_000_000
MIN_SIDE = 4
_PIL_FLAG_LOCK = threading.Lock()

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


def _read_pil(data: bytes, name: str, fmt: str, max_pixels: int) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings(), _strict_truncation():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            _check_plane(name, h, w, max_pixels)
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
        if im.mode == "RGBA" and arr.shape[-1] == 4 and (arr[..., 3] == 255).all():
            arr = arr[..., :3]  # an opaque alpha channel carries no information
        arr = np.moveaxis(arr, -1, 0)
    return _normalise_dtype(np.ascontiguousarray(arr))


def _read_tiff(data: bytes, name: str, max_pixels: int, max_voxels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if not tf.series:
                raise ImageError(name, "TIFF holds no image data")
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
            arr = series.asarray()
    except ImageError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error… for corrupt data
        raise ImageError(name, f"cannot decode TIFF: {e}") from e
    return _tiff_to_cfirst(arr, axes, name)


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
) -> np.ndarray:
    """Decode one image file.

    Args:
        data: the file's bytes.
        name: the file's name, used in error messages.
        max_pixels: largest accepted plane (height × width).
        max_voxels: largest accepted total number of values (channels × z × height × width).

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
        arr = _read_pil(data, name, fmt, max_pixels)
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        raise ImageError(name, "image contains NaN or infinite values")
    return arr
