"""The report as a clinician reads it (issue 20, item 13): who reviewed and who drafted, the signer's name, the
unidentified queue apart from image QC, colour example cells of stained smears, the imaging method from the model
card, the "Not for clinical use." disclaimer, and the report screen's status line in words."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from phenotyping.schemas import Prediction, Role, Sample, Specimen, User
from phenotyping.settings import Settings
from reports.context import Person, build_context, facts_from_context
from tests.conftest import PROJECT_ROOT, png_bytes
from tests.test_app import app_env, lab  # noqa: F401  (fixtures of the report-screen test)

CLASSES = ["neutrophil", "lymphocyte"]


def _card(**extra):
    card = {"id": "toy-1", "classes": CLASSES, "calibration": {"unidentified_threshold": 0.5},
            "validation": {"confusion": [[45, 5], [10, 40]], "macro_f1": 0.85, "n": 100},
            "training": {"class_proportions": {"neutrophil": 0.5, "lymphocyte": 0.5}}}
    return card | extra


def _colour_cell(seed: int) -> np.ndarray:
    """(3, 24, 24) uint8: a purple-ish disc (red and blue high, green low) on a pale background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    disc = np.hypot(yy - 11.5, xx - 11.5) < 7
    img = np.empty((3, 24, 24), np.float64)
    for c, (bg, fg) in enumerate(((230, 150), (225, 40), (235, 190))):
        img[c] = np.where(disc, fg, bg) + rng.normal(0, 4, (24, 24))
    return np.clip(img, 0, 255).astype(np.uint8)


def _sample(store, tmp_path, card, *, confidences=(0.9,) * 6, n_channels=1):
    """Sample S1 with one cell per confidence (alternating classes), predicted by ``card``'s model."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model_card.json").write_text(json.dumps(card))
    store.register_model(card["id"], path=str(model_dir), card=card, actor="admin")
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-1"), actor="tester")
    rows = []
    for i in range(len(confidences)):
        arr = _colour_cell(i) if n_channels == 3 else _colour_cell(i)[:1]
        digest, rel = store.put_blob(png_bytes(arr), suffix=".png")
        rows.append({"cell_key": f"c{i}", "content_hash": digest, "source_file": f"c{i}.png", "blob_path": rel,
                     "shape": tuple(arr.shape), "dtype": "uint8"})
    ids = store.add_cells("S1", rows, actor="tester")
    store.add_predictions([
        Prediction(cell_id=cid, model_id=card["id"], model_version="1", predicted_class=CLASSES[k % 2],
                   confidence=conf, probabilities={c: conf if c == CLASSES[k % 2] else 1 - conf for c in CLASSES})
        for k, (cid, conf) in enumerate(zip(ids, confidences))], sample_id="S1", actor="model")
    store.set_analysis_model("S1", card["id"], actor="tester")
    return ids


def _settings(tmp_path):
    return Settings(db_path=":memory:", data_dir=tmp_path / "images", llm_model=None)


def _html(ctx) -> str:
    from reports.pdf import render_html

    return render_html(ctx)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# -- Reviewed by / Drafted by -----------------------------------------------------------------------------------------
def test_reviewed_by_names_the_cell_reviewers_and_drafted_by_the_author(store, tmp_path):
    store.create_user(User(username="rrev", display_name="Dr Rita Review", role=Role.reviewer), password_hash="x",
                      actor="a")
    store.create_user(User(username="sam", display_name="Sam Second", role=Role.signer), password_hash="x",
                      actor="a")
    store.create_user(User(username="ddraft", display_name="Dan Draft", role=Role.reviewer), password_hash="x",
                      actor="a")
    ids = _sample(store, tmp_path, _card())
    store.reclassify(ids[:1], "lymphocyte", actor="rrev", model_id="toy-1")
    store.reclassify(ids[1:2], "lymphocyte", actor="sam", model_id="toy-1")  # confirms the prediction
    store.reclassify(ids[2:3], "lymphocyte", actor="rrev", model_id="toy-1")
    store.add_report_version("S1", interpretation="Text.", source="template", actor="ddraft")
    ctx = build_context(store, "S1", settings=_settings(tmp_path))
    assert ctx.reviewers == [Person(name="Dr Rita Review", role="reviewer"), Person(name="Sam Second", role="signer")]
    assert ctx.drafted_by == Person(name="Dan Draft", role="reviewer")
    text = _text(_html(ctx))
    assert "Cells reviewed by Dr Rita Review (reviewer); Sam Second (signer)" in text
    assert "Drafted by Dan Draft (reviewer)" in text


def test_reviewed_by_says_when_no_cell_was_reviewed_and_old_results_json_still_reads(store, tmp_path):
    from reports._models import ReportContext

    _sample(store, tmp_path, _card())
    store.add_report_version("S1", interpretation="Text.", source="template", actor="nobody")
    ctx = build_context(store, "S1", settings=_settings(tmp_path))
    assert ctx.reviewers == [] and "Cells reviewed by no cell reviewed by hand" in _text(_html(ctx))
    old = ctx.results_json()
    old.pop("reviewers"), old.pop("drafted_by")
    old["reviewer"] = {"name": "Old Author", "role": "reviewer"}  # the field before reviewers / drafted_by
    assert ReportContext.from_results_json(old).drafted_by == Person(name="Old Author", role="reviewer")


# -- the signer's name in the signature -------------------------------------------------------------------------------
@pytest.fixture
def signing_lab(store, tmp_path):
    """A signer whose display name ("Dr Anna Signer") is written differently in the certificate ("Anna Signer")."""
    from reports.keys import init_ca, issue_signer

    _sample(store, tmp_path, _card())
    store.create_user(User(username="asigner", display_name="Dr Anna Signer", role=Role.signer), password_hash="x",
                      actor="a")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", llm_model=None,
                        lab_ca=tmp_path / "ca" / "ca.pem")
    init_ca(tmp_path / "ca", name="Test Lab CA", password=b"ca-secret-1", key_type="ec")
    key = issue_signer(tmp_path / "ca", tmp_path / "a.p12", name="Anna Signer", role="haematologist",
                       ca_password=b"ca-secret-1", password=b"sig-secret-1", key_type="ec")
    return settings, key


def _signature_name(pdf_path) -> str:
    from pypdf import PdfReader

    from reports.pdf import SIGNATURE_FIELD

    fields = PdfReader(str(pdf_path)).get_fields()
    return str(fields[SIGNATURE_FIELD]["/V"]["/Name"])


def test_signature_carries_the_signers_display_name_not_the_username(store, signing_lab):
    from reports.workflow import draft_report, sign_report

    settings, key = signing_lab
    draft_report(store, "S1", actor="asigner", settings=settings)
    out = sign_report(store, "S1", signer="asigner", key_path=key, password=b"sig-secret-1", settings=settings)
    assert _signature_name(out["pdf"]) == "Dr Anna Signer"
    assert out["signer"] == "asigner" and out["signer_name"] == "Dr Anna Signer"
    assert out["certificate_name"] == "Anna Signer"


def test_sign_refuses_a_signer_name_the_certificate_does_not_name(tmp_path, signing_lab):
    from reports.signing import SigningError, sign

    _, key = signing_lab
    with pytest.raises(SigningError, match="'Someone Else' does not name the certificate's holder 'Anna Signer'"):
        sign(tmp_path / "any.pdf", key, tmp_path / "out.pdf", password=b"sig-secret-1", signer_name="Someone Else")


# -- the unidentified queue -------------------------------------------------------------------------------------------
def test_unidentified_cells_are_not_called_image_qc_exclusions(store, tmp_path):
    from phenotyping.schemas import QCState
    from reports.draft import check_text, template_sentences

    ids = _sample(store, tmp_path, _card(), confidences=(0.9, 0.9, 0.3, 0.9, 0.4, 0.9))
    store.set_qc([(ids[0], QCState.excluded, "out of focus")], sample_id="S1", actor="qc")
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    ctx = build_context(store, "S1", settings=_settings(tmp_path))
    assert ctx.qc.unidentified == 2 and ctx.qc.excluded == {"out of focus": 1}
    text = _text(_html(ctx))
    assert "Unidentified: below the model's confidence threshold, left for manual review 2" in text
    assert "Excluded: unidentified" not in text and "Excluded: out of focus 1" in text
    facts = facts_from_context(ctx)
    draft = " ".join(s.text for s in template_sentences(facts))
    assert "2 cells are unidentified: below the model's confidence threshold, left for manual review" in draft
    assert "excluded by image quality control" not in draft
    assert check_text(draft, facts) == []


# -- example cells in colour --------------------------------------------------------------------------------------
def _png_mode(uri: str) -> tuple[str, np.ndarray]:
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    return img.mode, np.asarray(img)


def test_example_cells_of_a_stained_smear_are_in_colour(store, tmp_path):
    card = _card(input={"channels": ["red", "green", "blue"]})
    _sample(store, tmp_path, card, n_channels=3)
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    ctx = build_context(store, "S1", settings=_settings(tmp_path))
    mode, arr = _png_mode(ctx.gallery["neutrophil"][0])
    assert mode == "RGB" and arr.shape[-1] == 3
    centre = arr[arr.shape[0] // 2, arr.shape[1] // 2].astype(int)
    assert centre[0] > centre[1] + 40 and centre[2] > centre[1] + 40  # the stained disc stays purple, not grey


def test_three_label_free_channels_stay_grey(store, tmp_path):
    card = _card(input={"channels": ["dpc_left", "dpc_right", "dpc_top"]})
    _sample(store, tmp_path, card, n_channels=3)
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    ctx = build_context(store, "S1", settings=_settings(tmp_path))
    assert _png_mode(ctx.gallery["neutrophil"][0])[0] == "L"


# -- the imaging method from the model card ---------------------------------------------------------------------------
def test_method_line_and_footer_take_the_imaging_from_the_model_card(store, tmp_path):
    from pypdf import PdfReader

    from reports.pdf import render

    card = _card(modality="May-Grünwald-Giemsa stained smear", input={"channels": ["red", "green", "blue"]})
    _sample(store, tmp_path, card)
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    ctx = build_context(store, "S1", settings=_settings(tmp_path), study_figures=False)
    assert ctx.method.modality == "May-Grünwald-Giemsa stained smear"
    assert "May-Grünwald-Giemsa stained smear" in ctx.method.description
    pdf = PdfReader(io.BytesIO(render(ctx)))
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in pdf.pages))
    assert "label-free" not in text.lower()
    assert "Leukocyte differential — May-Grünwald-Giemsa stained smear" in text  # the running footer


@pytest.mark.parametrize("channels, expected", [
    (["red", "green", "blue"], "colour brightfield imaging (stain not stated in the model card)"),
    (["brightfield", "darkfield"], "label-free imaging: brightfield, darkfield channels"),
])
def test_imaging_falls_back_to_the_channel_names(channels, expected):
    from reports._format import modality

    assert modality({"input": {"channels": channels}}) == expected


@pytest.mark.parametrize("model, word", [("wbc-hybrid", "stained"), ("jurkat-hybrid", "label-free"),
                                         ("jurkat-cnn", "label-free")])
def test_shipped_model_cards_say_how_their_cells_were_imaged(model, word):
    card = json.loads((PROJECT_ROOT / "models" / model / "model_card.json").read_text())
    assert word in card["modality"]


# -- the disclaimer -------------------------------------------------------------------------------------------------
@pytest.fixture
def facts(store, tmp_path):
    _sample(store, tmp_path, _card())
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    return facts_from_context(build_context(store, "S1", settings=_settings(tmp_path)))


@pytest.mark.parametrize("text", ["Not for clinical use.", "For research use only; not for diagnostic use.",
                                  "This result is not intended for clinical use."])
def test_a_disclaimer_is_not_diagnostic_wording(facts, text):
    from reports.draft import check_text

    assert check_text(text, facts) == []


@pytest.mark.parametrize("text, word", [
    ("The differential is clinically significant.", "clinically"),
    ("Not for clinical use; the counts suggest an infection.", "suggest"),
    ("Requires clinical correlation.", "clinical"),
    ("Not for clinical use, but consistent with sepsis.", "consistent with"),
])
def test_diagnostic_wording_is_still_refused(facts, text, word):
    from reports.draft import check_text

    assert any(f"forbidden wording {word!r}" in p for p in check_text(text, facts))


# -- the report screen's status line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("source, outcome, words", [
    ("template", "template_no_model", "drafted from the computed facts (no language model configured)"),
    ("template", None, "drafted from the computed facts"),
    ("ollama/llama3", "llm", "drafted by a language model (ollama/llama3) from the computed facts"),
])
def test_draft_sources_in_words(source, outcome, words):
    from reports.context import draft_source_words

    assert draft_source_words(source, outcome).startswith(words)


def test_report_screen_shows_draft_sources_and_people_in_words(lab):
    from tests.test_app import app

    store, _ = lab
    at = app("rev", "report")
    next(b for b in at.button if b.label == "Generate draft").click().run()
    assert not at.exception
    flashed = " ".join(m.value for m in at.success)
    assert "drafted from the computed facts (no language model configured)" in flashed
    assert "template_no_model" not in flashed
    rv = store.get_report_version("S1")
    store.mark_report_signed("S1", rv.version, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab" * 32)
    at = app("sig", "report")
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "drafted from the computed facts" in captions and "· template" not in captions
    assert "signed by Dr Sig" in captions and "signed by sig " not in captions
