"""The BSCCM reader, on a small data set built here in the bsccm package's layout."""

from __future__ import annotations


import pytest

from conftest import BSCCM_LED, build_bsccm

from phenotyping.errors import IngestError
from phenotyping.ingest import ingest_set, read_image
from phenotyping.schemas import Sample, Specimen

LED = BSCCM_LED


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
