"""Reader for the Berkeley Single Cell Computational Microscopy data set (BSCCM; Pinkard et al. 2024, Dryad
doi:10.5061/dryad.sxksn038s), in the layout of its ``bsccm`` package.

A BSCCM root folder holds:
- ``BSCCM_global_metadata.json``: ``{"name", "led_array": {"channel_names": [...]}, "fluorescence": {...}}``;
- ``BSCCM_index.csv``: one row per cell, ``global_index`` plus ``data_path``, ``batch``, ``slide_replicate``,
  ``antibodies``, …;
- ``BSCCM_images.zarr`` (a zarr v2 group): ``<data_path>/<contrast>/cell_<global_index>``, an array of shape
  ``(channels, H, W)`` for ``led_array`` (channels in the order of ``led_array.channel_names``) or ``(H, W)`` for the
  computed ``dpc`` image;
- optionally ``BSCCM_surface_markers.csv``: ``global_index`` plus one column per unmixed surface-marker intensity
  (e.g. ``CD16_full_model_unmixed``), which become the cells' continuous targets.

Each cell becomes one multi-channel TIFF (axes CYX, channel names in its metadata), so it is stored and read back
like any uploaded file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from phenotyping.errors import IngestError
from phenotyping.ingest._channels import tiff_bytes
from phenotyping.ingest._entry import Entry
from phenotyping.ingest.qdpc import HALF_PUPIL_CHANNELS

INDEX_CSV = "BSCCM_index.csv"
METADATA_JSON = "BSCCM_global_metadata.json"
MARKERS_CSV = "BSCCM_surface_markers.csv"
# The four half-pupil images that differential phase contrast is computed from.
DPC_CHANNELS = HALF_PUPIL_CHANNELS
_KEPT_INDEX_COLUMNS = ("batch", "slide_replicate", "antibodies", "data_path")


def is_bsccm_root(path: Path) -> bool:
    return (path / INDEX_CSV).is_file() and any(path.glob("BSCCM_images*.zarr"))


def _images_store(root: Path) -> Path:
    preferred = root / "BSCCM_images.zarr"
    if preferred.exists():
        return preferred
    found = sorted(root.glob("BSCCM_images*.zarr"))
    if len(found) != 1:
        raise IngestError(f"{root}: expected one BSCCM_images*.zarr, found {[p.name for p in found]}")
    return found[0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def iter_bsccm(
    root: Path,
    *,
    contrast: str = "led_array",
    channels: Sequence[str] = DPC_CHANNELS,
    marker_columns: Sequence[str] | None = None,
) -> Iterator[Entry]:
    """Entries for every cell of a BSCCM root.

    Args:
        contrast: ``"led_array"`` (pick ``channels`` by name) or ``"dpc"`` (the computed DPC image).
        channels: LED-array channel names to keep, in this order (default: the four DPC half-pupil images).
        marker_columns: surface-marker columns to keep as targets (default: all numeric ones).
    """
    import zarr

    root = Path(root)
    try:
        meta = json.loads((root / METADATA_JSON).read_text())
    except FileNotFoundError as e:
        raise IngestError(f"{root}: {METADATA_JSON} is missing; this is not a complete BSCCM folder") from e
    except json.JSONDecodeError as e:
        raise IngestError(f"{root / METADATA_JSON}: not valid JSON ({e})") from e
    if contrast not in ("led_array", "dpc"):
        raise IngestError(f"BSCCM contrast must be 'led_array' or 'dpc', not {contrast!r}")
    names = list(meta.get("led_array", {}).get("channel_names", []))
    if contrast == "led_array":
        missing = [c for c in channels if c not in names]
        if missing:
            raise IngestError(f"{root}: LED-array channel(s) {missing} not in this BSCCM variant; it has {names}")
        picks = [names.index(c) for c in channels]
        out_names = list(channels)
    else:
        picks, out_names = None, ["DPC"]
    markers: dict[str, dict[str, float]] = {}
    if (root / MARKERS_CSV).is_file():
        for row in _read_csv(root / MARKERS_CSV):
            gi = row.pop("global_index", None) or row.pop("", None)
            vals = {}
            for k, v in row.items():
                if marker_columns is not None and k not in marker_columns:
                    continue
                try:
                    vals[k] = float(v)
                except (TypeError, ValueError):
                    continue
                if not np.isfinite(vals[k]):
                    del vals[k]
            markers[str(gi)] = vals
    images = zarr.open(str(_images_store(root)), mode="r")
    for row in _read_csv(root / INDEX_CSV):
        gi = row.get("global_index", "")
        name = f"cell_{gi}"
        key = f"{row.get('data_path', '')}/{contrast}/{name}"
        try:
            arr = np.asarray(images[key])
        except KeyError:
            yield Entry(name=key, error="listed in BSCCM_index.csv but not in the zarr store")
            continue
        if contrast == "led_array":
            if arr.ndim != 3 or arr.shape[0] != len(names):
                yield Entry(name=key, error=f"LED-array image has shape {arr.shape}; expected ({len(names)}, H, W)")
                continue
            arr = arr[picks]
        else:
            arr = arr[None] if arr.ndim == 2 else arr
        data = tiff_bytes(np.ascontiguousarray(arr), out_names)
        yield Entry(
            name=key, read=lambda data=data: data, size=len(data), cell_key=str(gi),
            targets=markers.get(str(gi), {}),
            extra={**{c: row[c] for c in _KEPT_INDEX_COLUMNS if row.get(c)}, "channel_names": ",".join(out_names)},
        )
