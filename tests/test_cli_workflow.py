"""The whole review on the command line, with the app's gates: authenticated writers, roles (checked in the core
too), the unidentified queue, the interpretation check, and signed samples locked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from phenotyping.__main__ import main as pheno
from phenotyping.auth import PermissionDenied, create_first_admin, create_user, set_password, update_account
from phenotyping.schemas import QCState
from phenotyping.settings import Settings
from phenotyping.store import Store
from reports.__main__ import main as reports
from tests.conftest import PROJECT_ROOT
from tests.test_results import CARD
from tests.test_studies import make_sample

PASSWORDS = {"admin": "orbit-maple-crane-41", "sig": "signer-password-1", "rev": "reviewer-password-1"}
COMPOSITIONS = {"A": (12, 8), "B": (5, 15), "C": (10, 10)}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A database file with an admin, a signer and a reviewer, three samples analysed by a registered toy model
    (one cell of A flagged unidentified), and a password file per account."""
    from argon2 import PasswordHasher

    monkeypatch.delenv("LEUKO_PASSWORD", raising=False)
    # cheap argon2 parameters: every command authenticates, and the defaults cost ~0.1 s per hash by design
    monkeypatch.setattr("phenotyping.auth._hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    db = tmp_path / "lab.duckdb"
    model_dir = tmp_path / "toy-model"
    model_dir.mkdir()
    (model_dir / "model_card.json").write_text(json.dumps(CARD))
    with Store(db, image_dir=Settings(db_path=db).image_dir()) as store:
        create_first_admin(store, "admin", PASSWORDS["admin"])
        create_user(store, "sig", PASSWORDS["sig"], "signer", actor="admin", display_name="Dr Sig")
        create_user(store, "rev", PASSWORDS["rev"], "reviewer", actor="admin")
        store.register_model("toy-1", path=str(model_dir), card=CARD, actor="admin")
        for sid, (a, b) in COMPOSITIONS.items():
            make_sample(store, sid, a, b)
        unsure = store.list_cells("A")[0].id
        store.set_qc([(unsure, QCState.unidentified, None)], sample_id="A", actor="qc")
    for name, pw in PASSWORDS.items():
        (tmp_path / f"{name}.pw").write_text(pw + "\n")
    return db, tmp_path, unsure


def as_(lab, name: str) -> list[str]:
    db, tmp, _ = lab
    return ["--user", name, "--user-password-file", str(tmp / f"{name}.pw"), "--db", str(db)]


def run(capsys, main, argv: list[str]) -> tuple[int, dict | list | None, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, json.loads(out.out) if rc == 0 and out.out.strip() else None, out.err


def open_lab(lab, **kw) -> Store:
    db = lab[0]
    return Store(db, image_dir=Settings(db_path=db).image_dir(), **kw)


def n_events(lab) -> int:
    with open_lab(lab, read_only=True) as store:
        return len(store.list_audit(limit=100_000))


# -- authentication ---------------------------------------------------------------------------------------------------
def test_writes_without_an_account_are_refused(lab, capsys):
    db, tmp, unsure = lab
    (tmp / "counts.csv").write_text("sample_id,cell_type,count\nA,neutrophil,12\nA,lymphocyte,8\n")
    before = n_events(lab)
    attempts = [
        (pheno, ["review", "confirm", "--sample", "A", "--cell", str(unsure), "--db", str(db)]),
        (pheno, ["review", "reclassify", "--sample", "A", "--cell", str(unsure), "--label", "debris", "--db", str(db)]),
        (pheno, ["counts", "import", str(tmp / "counts.csv"), "--db", str(db)]),
        (pheno, ["study", "run", "--name", "s", "--db", str(db)]),
        (pheno, ["predict", "--model", str(tmp / "no-model"), "--sample", "A", "--db", str(db)]),
        (pheno, ["users", "create", "--username", "x", "--role", "reviewer", "--db", str(db)]),
        (reports, ["draft", "--sample", "A", "--db", str(db)]),
        (reports, ["amend", "--sample", "A", "--reason", "r", "--db", str(db)]),
        (reports, ["sign", "--sample", "A", "--db", str(db)]),
    ]
    for main, argv in attempts:
        rc, _, err = run(capsys, main, argv)
        assert rc == 2 and "needs your account: give --user NAME" in err, (argv, err)
    assert n_events(lab) == before  # nothing written, not even under a default name


def test_wrong_password_and_deactivated_account_are_refused(lab, capsys, monkeypatch):
    db, tmp, unsure = lab
    (tmp / "wrong.pw").write_text("not-the-password\n")
    confirm = ["review", "confirm", "--sample", "A", "--cell", str(unsure), "--db", str(db)]
    rc, _, err = run(capsys, pheno, [*confirm, "--user", "rev", "--user-password-file", str(tmp / "wrong.pw")])
    assert rc == 2 and "wrong password" in err
    rc, _, err = run(capsys, pheno, [*confirm, "--user", "nobody", "--user-password-file", str(tmp / "rev.pw")])
    assert rc == 2 and "unknown username or wrong password" in err
    with open_lab(lab) as store:
        update_account(store, "rev", actor="admin", active=False)
    monkeypatch.setenv("LEUKO_PASSWORD", PASSWORDS["rev"])  # the environment variable works like the file
    rc, _, err = run(capsys, pheno, [*confirm, "--user", "rev"])
    assert rc == 2 and "deactivated" in err
    with open_lab(lab, read_only=True) as store:
        assert not store.list_audit(action="cell.reclassify")


def test_roles_are_enforced_on_the_command_line(lab, capsys):
    db, tmp, _ = lab
    rc, _, err = run(capsys, reports, ["sign", "--sample", "B", "--key", str(tmp / "k.p12"), *as_(lab, "rev")])
    assert rc == 2 and "'rev' is a reviewer; to sign reports takes a signer or admin account" in err
    rc, _, err = run(capsys, reports, ["amend", "--sample", "B", "--reason", "typo", *as_(lab, "rev")])
    assert rc == 2 and "to amend signed reports takes a signer or admin account" in err
    (tmp / "new.pw").write_text("new-account-pw-1\n")
    create = ["users", "create", "--username", "rev2", "--role", "reviewer", "--password-file", str(tmp / "new.pw")]
    rc, _, err = run(capsys, pheno, [*create, *as_(lab, "sig")])
    assert rc == 2 and "to manage accounts takes a admin account" in err
    rc, user, _ = run(capsys, pheno, [*create, *as_(lab, "admin")])
    assert rc == 0 and user["username"] == "rev2"
    with open_lab(lab, read_only=True) as store:
        assert store.list_audit(action="user.create")[0].actor == "admin"  # the authenticated admin, not free text


def test_review_roles_are_enforced_in_the_core(lab):
    from phenotyping.analysis.review import confirm_cells, reclassify_cells

    _, _, unsure = lab
    with open_lab(lab) as store:
        with pytest.raises(PermissionDenied, match="'ghost' is not an account"):
            reclassify_cells(store, "A", [unsure], "debris", actor="ghost")
        update_account(store, "rev", actor="admin", active=False)
        with pytest.raises(PermissionDenied, match="deactivated"):
            confirm_cells(store, "A", None, actor="rev")
        assert store.list_cells("A")[0].reviewed_label is None


def test_report_and_account_roles_are_enforced_in_the_core(lab):
    from reports.workflow import amend_report, draft_report, save_edit

    settings = Settings(db_path=lab[0], llm_model=None)
    with open_lab(lab) as store:
        with pytest.raises(PermissionDenied, match="'ghost' is not an account"):
            draft_report(store, "A", actor="ghost", settings=settings)
        draft_report(store, "A", actor="rev", settings=settings)
        with pytest.raises(PermissionDenied, match="amend signed reports"):
            amend_report(store, "A", reason="typo", actor="rev")
        with pytest.raises(PermissionDenied, match="manage accounts"):
            create_user(store, "x", "long-enough-pw", "admin", actor="sig")
        with pytest.raises(PermissionDenied, match="manage accounts"):
            set_password(store, "admin", "long-enough-pw", actor="rev")
        with pytest.raises(PermissionDenied, match="manage accounts"):
            update_account(store, "rev", actor="rev", role="admin")
        update_account(store, "rev", actor="admin", active=False)
        with pytest.raises(PermissionDenied, match="deactivated"):
            save_edit(store, "A", "Edited by a deactivated account.", actor="rev")
        assert store.get_user("rev")[0].role.value == "reviewer"


# -- review -----------------------------------------------------------------------------------------------------------
def test_review_queue_confirm_and_reclassify(lab, capsys):
    db, _, unsure = lab
    rc, queue, _ = run(capsys, pheno, ["review", "queue", "--sample", "A", "--db", str(db)])
    assert rc == 0 and queue["unidentified"] == 1 and queue["cells"][0]["cell_id"] == unsure
    assert queue["labels"] == ["neutrophil", "lymphocyte", "debris", "other"]
    predicted = queue["cells"][0]["predicted_class"]
    rc, _, err = run(capsys, pheno, ["review", "reclassify", "--sample", "A", "--cell", str(unsure), "--label",
                                     "Neutrophil", *as_(lab, "rev")])
    assert rc == 2 and "unknown label 'Neutrophil' (did you mean 'neutrophil'?)" in err
    with open_lab(lab, read_only=True) as store:
        foreign = store.list_cells("B")[0].id
    rc, _, err = run(capsys, pheno, ["review", "reclassify", "--sample", "A", "--cell", str(foreign), "--label",
                                     "debris", *as_(lab, "rev")])
    assert rc == 2 and f"[{foreign}] are not cells of sample 'A'" in err
    rc, out, _ = run(capsys, pheno, ["review", "confirm", "--sample", "A", "--unidentified", "--note", "looked",
                                     *as_(lab, "rev")])
    assert rc == 0 and out["confirmed"] == {str(unsure): predicted} and out["changed"] == 1
    assert out["unidentified_left"] == 0
    other = "lymphocyte" if predicted == "neutrophil" else "neutrophil"
    rc, out, _ = run(capsys, pheno, ["review", "reclassify", "--sample", "A", "--cell", str(unsure), "--label",
                                     other, *as_(lab, "rev")])
    assert rc == 0 and out["changed"] == 1
    with open_lab(lab, read_only=True) as store:
        events = store.list_audit(action="cell.reclassify")
        assert [e.actor for e in events] == ["rev", "rev"] and events[1].after == {"label": predicted, "note": "looked"}
        assert store.list_cells("A")[0].reviewed_label == other


def test_unidentified_queue_blocks_signing(lab, capsys):
    db, tmp, _ = lab
    rc, draft, _ = run(capsys, reports, ["draft", "--sample", "A", *as_(lab, "rev")])
    assert rc == 0 and draft["version"] == 1 and draft["outcome"] == "template_no_model"
    (tmp / "k.p12").write_bytes(b"not used: the gate comes first")
    (tmp / "key.pw").write_text("key-password\n")
    rc, _, err = run(capsys, reports, ["sign", "--sample", "A", "--key", str(tmp / "k.p12"), "--password-file",
                                       str(tmp / "key.pw"), *as_(lab, "sig")])
    assert rc == 2 and "1 unidentified cell(s) await review" in err
    with open_lab(lab, read_only=True) as store:
        assert store.get_report_version("A").signed_at is None


def test_a_signed_sample_is_locked_for_command_line_writers(lab, capsys):
    db, tmp, unsure = lab
    with open_lab(lab) as store:
        store.add_report_version("A", interpretation="Text.", source="template", actor="rev")
        store.mark_report_signed("A", 1, signer="sig", status="final", pdf_path=str(tmp / "x.pdf"), pdf_hash="0")
    rc, _, err = run(capsys, pheno, ["review", "reclassify", "--sample", "A", "--cell", str(unsure), "--label",
                                     "debris", *as_(lab, "rev")])
    assert rc == 2 and "sample A is locked" in err
    rc, _, err = run(capsys, pheno, ["review", "confirm", "--sample", "A", "--unidentified", *as_(lab, "rev")])
    assert rc == 2 and "sample A is locked" in err
    (tmp / "counts.csv").write_text("sample_id,cell_type,count\nB,neutrophil,5\nB,lymphocyte,15\n"
                                    "A,neutrophil,12\nA,lymphocyte,8\n")
    rc, _, err = run(capsys, pheno, ["counts", "import", str(tmp / "counts.csv"), *as_(lab, "rev")])
    assert rc == 2 and "sample A is locked" in err
    (tmp / "text.txt").write_text("Changed after signing.\n")
    rc, _, err = run(capsys, reports, ["edit", "--sample", "A", "--text-file", str(tmp / "text.txt"),
                                       *as_(lab, "rev")])
    assert rc == 2 and "is signed and cannot change" in err
    rc, _, err = run(capsys, reports, ["draft", "--sample", "A", *as_(lab, "rev")])
    assert rc == 2 and "a signed report is never redrafted" in err
    with open_lab(lab, read_only=True) as store:
        assert store.get_manual_counts("B") == []  # the unlocked sample of the same file was not imported either
        assert store.list_cells("A")[0].reviewed_label is None
    rc, amended, _ = run(capsys, reports, ["amend", "--sample", "A", "--reason", "a cell misread", *as_(lab, "sig")])
    assert rc == 0 and amended["version"] == 2 and amended["amends_version"] == 1
    rc, _, _ = run(capsys, pheno, ["review", "reclassify", "--sample", "A", "--cell", str(unsure), "--label",
                                   "debris", *as_(lab, "rev")])
    assert rc == 0  # the amendment unlocked it


# -- manual counts and studies ----------------------------------------------------------------------------------------
def test_counts_import_and_show(lab, capsys):
    db, tmp, _ = lab
    rows = "".join(f"{s},neutrophil,{a * 10 + 3},200\n{s},lymphocyte,{200 - a * 10 - 3},200\n"
                   for s, (a, _) in COMPOSITIONS.items())
    (tmp / "counts.csv").write_text("sample_id,cell_type,count,total_counted\n" + rows)
    rc, _, err = run(capsys, pheno, ["counts", "import", str(tmp / "counts.csv"), "--sample", "A", *as_(lab, "rev")])
    assert rc == 2 and "rows for sample(s) ['B', 'C'] besides --sample A" in err
    (tmp / "bad.csv").write_text("sample_id,cell_type,count\nA,neutrophil,12\nA,basophil,8\n")
    rc, _, err = run(capsys, pheno, ["counts", "import", str(tmp / "bad.csv"), *as_(lab, "rev")])
    assert rc == 2 and "unknown cell type 'basophil'" in err and "['neutrophil', 'lymphocyte']" in err  # not in BAL
    assert "not in the model" in err and "macrophage" in err  # what a BAL count may hold besides the model's
    (tmp / "bal.csv").write_text("sample_id,cell_type,count\nA,neutrophil,12\nA,lymphocyte,6\nA,macrophage,80\n")
    rc, done, _ = run(capsys, pheno, ["counts", "import", str(tmp / "bal.csv"), *as_(lab, "rev")])
    assert rc == 0 and done == {"A": 3}  # a BAL count may hold macrophages, which the model lacks
    with open_lab(lab, read_only=True) as store:
        assert {c.cell_type: c.count for c in store.get_manual_counts("A")}["macrophage"] == 80
    rc, done, _ = run(capsys, pheno, ["counts", "import", str(tmp / "counts.csv"), *as_(lab, "rev")])
    assert rc == 0 and done == {"A": 2, "B": 2, "C": 2}
    rc, shown, _ = run(capsys, pheno, ["counts", "show", "--sample", "B", "--db", str(db)])
    assert rc == 0 and {r["cell_type"]: r["count"] for r in shown} == {"neutrophil": 53, "lymphocyte": 147}
    assert {r["entered_by"] for r in shown} == {"rev"}


def test_study_run_list_show(lab, capsys):
    db, tmp, unsure = lab
    rows = "".join(f"{s},neutrophil,{a * 10 + 3},200\n{s},lymphocyte,{200 - a * 10 - 3},200\n"
                   for s, (a, _) in COMPOSITIONS.items())
    (tmp / "counts.csv").write_text("sample_id,cell_type,count,total_counted\n" + rows)
    assert run(capsys, pheno, ["counts", "import", str(tmp / "counts.csv"), *as_(lab, "rev")])[0] == 0
    assert run(capsys, pheno, ["review", "confirm", "--sample", "A", "--unidentified", *as_(lab, "rev")])[0] == 0
    rc, study, _ = run(capsys, pheno, ["study", "run", "--name", "pilot", *as_(lab, "rev")])
    assert rc == 0 and study["model_id"] == "toy-1" and study["sample_ids"] == ["A", "B", "C"]
    # model: a/20 = 5a %, manual: (10a + 3)/200 = 5a + 1.5 % -> model - manual = -1.5 points for neutrophils
    assert study["per_class"]["neutrophil|raw"]["bias"] == pytest.approx(-1.5)
    assert study["created_by"] == "rev"
    rc, _, err = run(capsys, pheno, ["study", "run", "--name", "pilot", *as_(lab, "rev")])
    assert rc == 2 and "a study named 'pilot' exists" in err
    rc, _, err = run(capsys, pheno, ["study", "run", "--name", "pilot", "--replace", "--sample", "C", "A", "B",
                                   "--measure", "percent", *as_(lab, "rev")])
    assert rc == 0, err
    rc, listed, _ = run(capsys, pheno, ["study", "list", "--db", str(db)])
    assert rc == 0 and [(s["name"], s["n_samples"]) for s in listed] == [("pilot", 3)]
    rc, shown, _ = run(capsys, pheno, ["study", "show", "pilot", "--db", str(db)])
    assert rc == 0 and shown["result"]["measure"] == "percent" and shown["sample_ids"] == ["C", "A", "B"]


# -- signing through the store ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sign_sample_records_the_signed_version_and_checks_the_draft(lab, capsys, monkeypatch):
    from reports.keys import init_ca, issue_signer
    from reports.signing import verify

    db, tmp, unsure = lab
    init_ca(tmp / "ca", name="Test Lab CA", password=b"ca-secret-1", key_type="ec")
    key = issue_signer(tmp / "ca", tmp / "sig.p12", name="Dr Sig", role="haematologist", ca_password=b"ca-secret-1",
                       password=b"key-secret-1", key_type="ec")
    (tmp / "key.pw").write_text("key-secret-1\n")
    monkeypatch.setenv("LEUKO_LAB_CA", str(tmp / "ca" / "ca.pem"))
    sign = ["sign", "--sample", "A", "--key", str(key), "--password-file", str(tmp / "key.pw"), *as_(lab, "sig")]
    assert run(capsys, pheno, ["review", "confirm", "--sample", "A", "--unidentified", *as_(lab, "rev")])[0] == 0
    assert run(capsys, reports, ["draft", "--sample", "A", *as_(lab, "rev")])[0] == 0
    (tmp / "text.txt").write_text("Neutrophils were 99.0% of the counted cells.\n")  # not what was counted
    rc, edited, _ = run(capsys, reports, ["edit", "--sample", "A", "--text-file", str(tmp / "text.txt"),
                                          *as_(lab, "rev")])
    assert rc == 0 and edited["version"] == 2 and edited["changed"]
    rc, _, err = run(capsys, reports, sign)
    assert rc == 2 and "interpretation: number" in err and "99" in err
    assert run(capsys, reports, ["draft", "--sample", "A", *as_(lab, "rev")])[0] == 0  # v3: drafted from the facts
    rc, out, _ = run(capsys, reports, [*sign, "--out", str(tmp / "A-signed.pdf")])
    assert rc == 0 and out["version"] == 3 and out["status"] == "final" and out["signer"] == "sig"
    assert (tmp / "A-signed.pdf").read_bytes() == open(out["pdf"], "rb").read()
    v = verify(tmp / "A-signed.pdf", trust=tmp / "ca" / "ca.pem")
    assert v["intact"] and v["trusted"]
    with open_lab(lab, read_only=True) as store:
        rv = store.get_report_version("A")
        assert rv.signed_by == "sig" and rv.pdf_hash == out["sha256"]
        assert store.get_sample("A").status.value == "signed"
    rc, _, err = run(capsys, reports, sign)
    assert rc == 2 and "already signed" in err


def test_help_is_fast_and_loads_no_model_code():
    code = ("import sys\n"
            "from phenotyping.__main__ import build_parser as a\n"
            "from reports.__main__ import build_parser as b\n"
            "a(); b()\n"
            "print(sorted(m for m in ('torch', 'timm', 'weasyprint', 'litellm', 'sklearn', 'duckdb') "
            "if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr
    for argv in (["phenotyping", "review", "confirm"], ["phenotyping", "counts", "import"],
                 ["phenotyping", "study", "run"], ["reports", "sign"], ["reports", "draft"]):
        p = subprocess.run([sys.executable, "-m", *argv, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0 and "--user" in p.stdout, argv
