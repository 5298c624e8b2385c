"""A sample's results as SQL aggregations (phenotyping.analysis.aggregates) against the per-cell path (results.py).

Random small samples with image-QC exclusions, QC overrides, reviews (model classes and debris), the unidentified
queue and cells without predictions: both paths must give the same differential, exclusions and marker statistics,
and the paged gallery the same cells in the same order as sorting every cell in Python.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phenotyping.analysis.aggregates import gallery_page, sample_summary
from phenotyping.analysis.results import sample_results
from phenotyping.schemas import Prediction, QCState, Sample, Specimen
from tests.test_store import add_cells

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "erythroblast"]


def card(threshold: float) -> dict:
    return {
        "id": "toy-1", "classes": CLASSES,
        "calibration": {"temperature": 1.0, "unidentified_threshold": threshold},
        "validation": {"confusion": [[40, 5, 3, 2], [6, 38, 4, 2], [3, 4, 41, 2], [1, 2, 2, 45]],
                       "confusion_confident": [[35, 3, 1, 1], [4, 33, 2, 1], [2, 2, 36, 0], [0, 1, 1, 40]]},
        "training": {"posterior_prior": {"classes": {c: 0.25 for c in CLASSES}}},
        "specimens": {"blood": {"counted": CLASSES[:3], "per_100_leukocytes": ["erythroblast"]}},
    }


def build(store, seed: int) -> dict:
    """A random sample S1 of 40-70 cells analysed by toy-1; returns its card."""
    rng = np.random.default_rng(seed)
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-1"), actor="t")
    ids = add_cells(store, int(rng.integers(40, 71)))
    queue = seed % 2 == 0  # odd seeds: nothing waits in the queue, so EM runs
    preds = []
    for i in ids:
        if rng.random() < 0.1:
            continue  # not analysed
        p = rng.dirichlet(np.ones(len(CLASSES)) * 0.7)
        k = int(np.argmax(p))
        targets = {}
        if rng.random() < 0.8:
            targets["cd16"] = float(rng.normal(10 * k, 2))
        if rng.random() < 0.5:
            targets["cd3"] = float(rng.lognormal(1, 0.5))
        probs = {c: float(v) for c, v in zip(CLASSES, p) if v > 0.02}  # some classes missing from the map
        preds.append(Prediction(cell_id=i, model_id="toy-1", model_version="1", predicted_class=CLASSES[k],
                                confidence=float(p[k]), probabilities=probs, targets=targets))
    store.add_predictions(preds, sample_id="S1", actor="model")
    qc = []
    for i in ids:
        u = rng.random()
        if u < 0.12:
            qc.append((i, QCState.excluded, f"out of focus: focus {u:.2f} < 0.30"))
        elif u < 0.18:
            qc.append((i, QCState.excluded, "saturated"))
        elif u < 0.21:
            qc.append((i, QCState.excluded, None))
        elif u < 0.25 and queue:
            qc.append((i, QCState.unidentified, None))
        else:
            qc.append((i, QCState.passed, None))
    store.set_qc(qc, sample_id="S1", actor="qc")
    for i, state, _ in qc:
        u = rng.random()
        if state == QCState.excluded and u < 0.4:
            store.reclassify([i], str(rng.choice([*CLASSES, "debris"])), actor="rev", note="in focus on inspection",
                             model_id="toy-1", override_qc=True)
        elif u < 0.15:
            store.reclassify([i], str(rng.choice([*CLASSES, "debris", "other"])), actor="rev", model_id="toy-1")
    store.set_analysis_model("S1", "toy-1", actor="rev")
    return card(0.55 if queue else 0.0)


def same(a, b, where="") -> None:
    """Equal, floats to 1e-9 relative (DuckDB and Python may sum in another order), NaN equal to NaN."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("seed", range(8))
def test_sql_aggregates_equal_the_per_cell_path(store, seed):
    c = build(store, seed)
    n_boot = 20 if seed < 2 else 0
    res = sample_results(store, "S1", card=c, n_bootstrap=n_boot, seed=3)
    summ = sample_summary(store, "S1", card=c, n_bootstrap=n_boot, seed=3)
    same(res.to_dict(), summ.to_dict())
    assert summ.exclusions == res.exclusions and summ.n_unidentified == res.n_unidentified
    assert summ.n_not_analysed == res.n_not_analysed
    if seed % 2:
        assert res.differential.em is not None  # the EM matrix path is exercised, bootstrap included for seed 1
    counted = [r for r in res.cells if r.counted]
    assert dict(summ.counts) == {lab: sum(1 for r in counted if r.final_label == lab)
                                 for lab in {r.final_label for r in counted}}
    for m in summ.marker_stats:  # the extra statistics: mean and sample SD of the finite values
        v = np.array([r.targets[m.target] for r in counted if r.final_label == m.label and m.target in r.targets])
        assert m.n == v.size
        if v.size:
            assert m.mean == pytest.approx(v.mean(), rel=1e-9)
            assert (math.isnan(m.sd) if v.size < 2 else m.sd == pytest.approx(v.std(ddof=1), rel=1e-9))


def test_probability_matrix_matches_the_per_cell_rows(store):
    from phenotyping.analysis.results import _probability_rows

    c = build(store, 1)
    res = sample_results(store, "S1", card=c, n_bootstrap=0)
    m = store.counted_probabilities("S1", "toy-1", CLASSES, 0.0)
    expected = _probability_rows([r for r in res.cells if r.counted], CLASSES)
    assert m.shape == expected.shape and m.dtype == np.float64
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)


def python_groups(res) -> dict:
    """The gallery groups and orders as pages/review.py builds them from every cell."""
    groups = {("queue", None): [r for r in res.cells if r.unidentified],
              ("excluded", None): [r for r in res.cells if r.exclusion and not r.unidentified],
              ("all", None): list(res.cells)}
    for c in CLASSES:
        groups[("class", c)] = [r for r in res.cells if r.counted and r.final_label == c]
    return groups


@pytest.mark.parametrize("seed", [0, 1])
def test_gallery_pages_are_the_sorted_cells_page_by_page(store, seed):
    c = build(store, seed)
    res = sample_results(store, "S1", card=c, n_bootstrap=0)
    summ = sample_summary(store, "S1", card=c, n_bootstrap=0)
    for (show, label), cells in python_groups(res).items():
        assert summ.group_sizes()[label or show] == len(cells)
        for order in ("confidence", "-confidence", "id"):
            if order == "id":
                want = cells
            else:
                want = sorted(cells, key=lambda r: (r.confidence is None, r.confidence or 0.0),
                              reverse=order == "-confidence")
            got, page = [], 1
            while True:
                p = gallery_page(store, "S1", show=show, label=label, order=order, page=page, page_size=7, card=c)
                assert p.total == len(cells) and p.n_pages == max(1, -(-len(cells) // 7))
                got += p.cells
                if page >= p.n_pages:
                    break
                page += 1
            assert [r.cell.id for r in got] == [r.cell.id for r in want], (show, label, order)
            assert got == want  # the same CellResult objects: cell, prediction, final label, exclusion


def test_without_a_model_the_summary_counts_nothing(store, sample):
    ids = add_cells(store, 3)
    store.set_qc([(ids[0], QCState.excluded, "saturated")], sample_id="S1", actor="qc")
    res, summ = sample_results(store, "S1"), sample_summary(store, "S1")
    assert summ.differential is None and summ.exclusions == res.exclusions == {"saturated": 1, "not analysed": 2}
    p = gallery_page(store, "S1", show="excluded")
    assert p.total == 3 and [r.exclusion for r in p.cells] == [r.exclusion for r in res.cells]


def test_bad_gallery_arguments_say_what_is_allowed(store):
    c = build(store, 0)
    with pytest.raises(ValueError, match="show='nope' is not one of"):
        gallery_page(store, "S1", show="nope", card=c)
    with pytest.raises(ValueError, match="order='size' is not one of"):
        gallery_page(store, "S1", order="size", card=c)
    with pytest.raises(ValueError, match="needs the class name"):
        gallery_page(store, "S1", show="class", card=c)
    with pytest.raises(ValueError, match="page=0"):
        gallery_page(store, "S1", page=0, card=c)


def test_bench_results_command_runs_small(tmp_path, capsys):
    """The bench's wiring on a few hundred cells (figures are the bench's business, not a test's)."""
    import json

    from phenotyping.__main__ import main

    rc = main(["bench", "results", "--cells", "300", "--page-cells", "120", "--compare-cells", "60", "--bootstrap",
               "5", "--workdir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["cells"] == 300 and out["pages"]["PAGE"]["cells"] == 120
    assert out["n_counted"] + sum(out["exclusions"].values()) == 300
    assert out["em_shown"] == "em" and out["rss_peak_mib"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary database is gone


def test_synthesis_is_deterministic_and_counts_as_designed(store):
    from phenotyping.analysis.results_bench import CLASSES, MODEL_ID, bench_card

    for sid in ("X", "Y"):
        store.create_sample(Sample(id=sid, specimen=Specimen.blood), actor="t")
        store.predictions.synthesise(sid, MODEL_ID, 2000, CLASSES, actor="t", seed=1)
        store.set_analysis_model(sid, MODEL_ID, actor="t")
    x, y = (sample_summary(store, s, card=bench_card(0.5), n_bootstrap=0) for s in ("X", "Y"))
    assert x.exclusions == y.exclusions and x.counts == y.counts
    assert x.n_cells == 2000 and x.counts["neutrophil"] > x.counts["basophil"] > 0
    with pytest.raises(ValueError, match="at least two"):
        store.predictions.synthesise("X", MODEL_ID, 10, ["a"], actor="t")
