"""The BSCCM reader, on a small data set built here in the bsccm package's layout."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from phenotyping.errors import IngestError
from phenotyping.ingest import ingest_set, read_image
from phenotyping.schemas import Sample, Specimen

LED = ["Brightfield", "DF_50", "DPC_Bottom", "DPC_Left", "DPC_Right", "DPC_Top"]


def build_bsccm(root, n=6, *, drop=None):
    import zarr

    root.mkdir(parents=True)
    (root / "BSCCM_global_metadata.json").write_text(json.dumps({
        "name": "BSCCM-tiny-test", "led_array": {"channel_names": LED},
        "fluorescence": {"channel_names": ["Fluor_690-"]}}))
    g = zarr.open_group(str(root / "BSCCM_images.zarr"), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    with open(root / "BSCCM_index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["global_index", "data_path", "batch", "slide_replicate", "antibodies"])
        for i in range(n):
            data_path = f"batch_0/slide_{i % 2}"
            w.writerow([i, data_path, 0, i % 2, "CD16"])
            if i == drop:
                continue
            arr = np.stack([np.full((16, 16), 100 * (c + 1), np.uint16) for c in range(len(LED))])
            arr += rng.integers(0, 50, size=arr.shape).astype(np.uint16)
            g.create_array(f"{data_path}/led_array/cell_{i}", data=arr)
    with open(root / "BSCCM_surface_markers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["global_index", "CD16_full_model_unmixed", "CD45_full_model_unmixed"])
        for i in range(n):
            w.writerow([i, 0.5 * i, 1.0])
    return root


def test_bsccm_folder_ingests_dpc_channels_with_markers(store, tmp_path):
    root = build_bsccm(tmp_path / "BSCCM-tiny", drop=3)
    store.create_sample(Sample(id="B1", specimen=Specimen.blood), actor="t")
    r = ingest_set(store, root, "B1", actor="t")
    assert r.ingested == 5
    assert [x.file for x in r.rejected] == ["batch_0/slide_1/led_array/cell_3"]
    cells = {c.cell_key: c for c in store.list_cells("B1")}
    c = cells["4"]
    assert c.shape == (4, 16, 16) and c.dtype == "uint16"
    assert c.targets == {"CD16_full_model_unmixed": 2.0, "CD45_full_model_unmixed": 1.0}
    assert c.extra["channel_names"] == "DPC_Left,DPC_Right,DPC_Top,DPC_Bottom"
    arr = read_image(store.read_cell_bytes(c), "cell_4")
    # DPC_Left is LED channel 3: its base value is 400, below 450 after noise
    assert 400 <= arr[0].min() and arr[0].max() < 450
    assert 300 <= arr[3].min() and arr[3].max() < 350  # DPC_Bottom, LED channel 2


def test_bsccm_unknown_channel_is_a_clear_error(store, tmp_path):
    root = build_bsccm(tmp_path / "BSCCM-tiny")
    store.create_sample(Sample(id="B1", specimen=Specimen.blood), actor="t")
    with pytest.raises(IngestError, match="DPC_Diagonal.*not in this BSCCM variant"):
        ingest_set(store, root, "B1", actor="t", bsccm_options={"channels": ["DPC_Diagonal"]})
