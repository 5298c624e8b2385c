"""The Review gallery (issue 20 item 11, issue 15 part 5): one-key reclassify/confirm, a confirm per cell, the queue in
least-confident or most-informative order, and a tick that does not decode the page's images again."""

from __future__ import annotations

import pytest

from phenotyping.analysis.results import CellResult
from phenotyping.analysis.review import REVIEW_ORDERS, order_cells, uncertainty
from tests.test_app import app, app_env, lab  # noqa: F401  (fixtures)


def _cell(cid: int, probs: dict[str, float] | None) -> CellResult:
    from phenotyping.schemas import Cell

    c = Cell(id=cid, sample_id="S", cell_key=f"k{cid}", content_hash="0" * 64, source_file=f"c{cid}.png",
             blob_path="x", channels=1, shape=(1, 4, 4), dtype="uint8")
    conf = max(probs.values()) if probs else None
    label = max(probs, key=probs.get) if probs else None
    return CellResult(c, label, conf, probs, {}, label, False, "unidentified")


def test_uncertainty_margin_and_entropy():
    assert uncertainty({"a": 0.5, "b": 0.5}, "margin") == pytest.approx(1.0)
    assert uncertainty({"a": 1.0, "b": 0.0}, "margin") == pytest.approx(0.0)
    assert uncertainty({"a": 0.7, "b": 0.2, "c": 0.1}, "margin") == pytest.approx(0.5)
    assert uncertainty({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, "entropy") == pytest.approx(1.0)
    assert uncertainty({"a": 1.0, "b": 0.0, "c": 0.0}, "entropy") == pytest.approx(0.0)
    assert uncertainty(None) is None
    with pytest.raises(ValueError, match="unknown uncertainty method 'gini'"):
        uncertainty({"a": 1.0}, "gini")


def test_most_informative_differs_from_least_confident():
    """Equal top probability, different runner-up: confidence cannot tell them apart, the margin can."""
    close = _cell(1, {"a": 0.45, "b": 0.44, "c": 0.11})     # a coin toss between a and b
    spread = _cell(2, {"a": 0.45, "b": 0.30, "c": 0.25})
    sure = _cell(3, {"a": 0.9, "b": 0.05, "c": 0.05})
    none = _cell(4, None)
    cells = [none, sure, spread, close]
    assert [r.cell.id for r in order_cells(cells, "margin")] == [1, 2, 3, 4]
    assert [r.cell.id for r in order_cells(cells, "entropy")] == [2, 1, 3, 4]
    assert [r.cell.id for r in order_cells(cells, "confidence")] == [1, 2, 3, 4]
    assert [r.cell.id for r in order_cells(cells, "confidence_desc")] == [3, 1, 2, 4]
    with pytest.raises(ValueError, match="unknown review order 'random'"):
        order_cells(cells, "random")


def test_reclassify_confirm_and_paging_have_keys_shown_on_screen(lab):
    at = app("rev", "review")
    assert not at.exception
    assert at.button(key="to_neutrophil").proto.shortcut == "1"
    assert at.button(key="to_lymphocyte").proto.shortcut == "2"
    assert at.button(key="to_debris").proto.shortcut == "3"
    assert at.button(key="confirm_selected").proto.shortcut.lower() == "enter"
    assert at.button(key="select_page").proto.shortcut.lower() == "a"
    assert any("Enter confirm as predicted" in c.value for c in at.caption)


def test_confirm_selected_cells_as_predicted_empties_the_queue(lab):
    store, ids = lab
    at = app("rev", "review")
    assert at.button(key="confirm_selected").disabled      # nothing ticked yet
    for cid in ids[:2]:
        at.checkbox(key=f"pick_{cid}").check()
    at.run()
    at.button(key="confirm_selected").click().run()
    assert not at.exception
    assert [store.get_cell(c).reviewed_label for c in ids[:2]] == ["neutrophil", "lymphocyte"]
    assert any("2 cell(s) confirmed as predicted" in s.value for s in at.success)
    assert not any("Signing is blocked" in w.value for w in at.warning)


def test_one_click_confirm_of_a_single_cell(lab):
    store, ids = lab
    at = app("rev", "review")
    at.button(key=f"confirm_{ids[1]}").click().run()
    assert not at.exception
    assert store.get_cell(ids[1]).reviewed_label == "lymphocyte"
    assert store.get_cell(ids[0]).reviewed_label is None
    assert any("Signing is blocked: 1 unidentified" in w.value for w in at.warning)


def test_queue_can_be_ordered_most_informative_first(lab):
    store, ids = lab
    at = app("rev", "review")
    assert at.selectbox(key="order").options == list(REVIEW_ORDERS.values())
    at.selectbox(key="order").set_value("margin").run()
    assert not at.exception
    assert [c.key for c in at.checkbox if c.key.startswith("pick_")] == [f"pick_{ids[0]}", f"pick_{ids[1]}"]


def test_a_tick_does_not_decode_the_page_again(lab, monkeypatch):
    import streamlit as st

    import phenotyping.analysis.cellview as cellview

    st.cache_data.clear()
    calls = []
    real = cellview.cell_display
    monkeypatch.setattr(cellview, "cell_display", lambda store, cell: calls.append(cell.id) or real(store, cell))
    store, ids = lab
    at = app("rev", "review")
    at.radio(key="group_S1").set_value("All cells").run()
    first = len(calls)
    assert first >= len(ids)
    at.checkbox(key=f"pick_{ids[3]}").check().run()
    assert not at.exception
    assert len(calls) == first


def _place(block: object, key: str, path: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """Where the widget ``key`` sits in the page: the child index at every level of the element tree."""
    for i, child in getattr(block, "children", {}).items():
        if getattr(child, "key", None) == key:
            return (*path, i)
        found = _place(child, key, (*path, i))
        if found is not None:
            return found
    return None


def test_the_gallery_widgets_keep_their_place_when_a_message_shows(lab):
    """Streamlit keys an element by its place: when a confirmation message shows and the "Signing is blocked" warning
    goes, the group picker, the action buttons and the remaining cells' boxes must stay where they were, or a gallery
    run cut short by the next click leaves a dead copy of a widget beside the live one (seen in chromium under load:
    two pagers, and the J key lost)."""
    store, ids = lab
    at = app("rev", "review")
    keys = ["group_S1", "order", "select_page", f"pick_{ids[0]}"]
    before = {k: _place(at.main, k) for k in keys}
    assert all(before.values()), before
    assert any("Signing is blocked" in w.value for w in at.warning)
    for cid in ids[1:2]:
        at.checkbox(key=f"pick_{cid}").check()
    at.run()
    at.button(key="confirm_selected").click().run()
    assert not at.exception
    assert any("1 cell(s) confirmed as predicted" in s.value for s in at.success)   # a message above the gallery
    assert {k: _place(at.main, k) for k in keys} == before
