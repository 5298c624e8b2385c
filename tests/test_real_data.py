"""Every shared real data set ingests as it is, with the counts its README gives."""

from __future__ import annotations

from collections import Counter

import pytest

from phenotyping.ingest import ingest_set
from phenotyping.schemas import Sample, Specimen
from tests.conftest import shared_data


# segwbc-d1 ships images/139.bmp byte-identical to images/112.bmp (both labelled lymphocyte): the README's 300
# files are 299 distinct cells plus one duplicate, which ingestion reports rather than counting twice.
@pytest.mark.parametrize(
    "parts, n, duplicates, labels, channels",
    [
        (("ifc-jurkat-labelfree",), 2735, {},
         {"G1": 720, "S": 720, "G2": 720, "Prophase": 485, "Metaphase": 55, "Telophase": 22, "Anaphase": 13}, 2),
        (("wbc-smear", "segwbc-d1"), 300, {"images/139.bmp": "images/112.bmp"},
         {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48, "eosinophil": 22, "basophil": 1}, 3),
        (("wbc-smear", "bccd"), 351, {},
         {"Neutrophil": 207, "Eosinophil": 88, "Lymphocyte": 33, "Monocyte": 20, "Basophil": 3}, 3),
    ],
)
def test_shared_set_ingests_with_readme_counts(store, parts, n, duplicates, labels, channels):
    src = shared_data(*parts)
    store.create_sample(Sample(id="R1", specimen=Specimen.blood), actor="t")
    r = ingest_set(store, src, "R1", actor="t")
    assert r.ingested + r.duplicates == n
    assert r.duplicates == len(duplicates)
    assert {x.file: x.reason for x in r.rejected} == {f: f"duplicate: same content as {orig}"
                                                     for f, orig in duplicates.items()}
    cells = store.list_cells("R1")
    counted = Counter(c.reference_label for c in cells)
    for f in duplicates:  # the duplicate's label is the same as its original's
        counted["lymphocyte"] += 1
    assert counted == labels
    assert {c.channels for c in cells} == {channels}


def test_jurkat_targets_and_groups_are_kept(store):
    src = shared_data("ifc-jurkat-labelfree")
    store.create_sample(Sample(id="R1", specimen=Specimen.blood), actor="t")
    ingest_set(store, src, "R1", actor="t")
    c = store.list_cells("R1", limit=1)[0]
    assert set(c.targets) == {"dna_content"} and c.targets["dna_content"] > 0
    assert c.extra["montage"].startswith("CP") and c.dtype == "uint16" and c.shape == (2, 40, 40)


# -- the shipped WBC model (models/wbc-hybrid, trained on segwbc-d1, bccd and PBC; its image QC checked at each site) ---
def _wbc_card() -> dict:
    import json

    from tests.conftest import PROJECT_ROOT

    path = PROJECT_ROOT / "models" / "wbc-hybrid" / "model_card.json"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped in this checkout")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("parts, every", [(("wbc-smear", "bccd"), 1), (("wbc-smear", "segwbc-d1"), 1),
                                         (("wbc-pbc",), 10)])
def test_shipped_wbc_qc_keeps_valid_cells_at_every_site(parts, every):
    """Every image of these sets is a valid single cell: the shipped card's image QC excludes at most 3 % of each
    site's cells, and no class more than twice the site's rate (one cell of slack for small classes). BCCD's tight
    crops read 45 % excluded (empty, debris, focus 0) under the earlier border-noise QC."""
    import math

    from phenotyping.analysis.qc import QCConfig, check_images
    from phenotyping.training.data import load_rows, read_cell

    cfg = QCConfig.from_dict(_wbc_card()["qc"])
    rows = load_rows(shared_data(*parts), label_column="cell_type")[::every]
    res = []
    for start in range(0, len(rows), 200):
        res += check_images([read_cell(r["path"]) for r in rows[start:start + 200]], cfg)
    excluded = [not r.passed for r in res]
    rate = sum(excluded) / len(rows)
    assert rate <= 0.03, Counter(r.code for r in res if r.code)
    by_class: dict[str, list[bool]] = {}
    for r, ex in zip(rows, excluded):
        by_class.setdefault(r["cell_type"].lower(), []).append(ex)
    for name, ex in by_class.items():
        assert sum(ex) <= max(1, math.ceil(2 * rate * len(ex))), (name, sum(ex), len(ex), rate)
