"""The README's "From images to a signed report" block, run exactly as written, ends in a verified signed PDF.

The block runs with bash (``-e``: the first failing command fails the test) in a temporary project folder made of
links to this checkout's ``.venv``, ``models`` and packages, beside a link to ``../shared``, so nothing is copied
and nothing is written into the checkout; the database is ``LEUKO_DB_PATH`` in that folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT, shared_data

HEADING = "### From images to a signed report"


def readme_block() -> str:
    """The first ```bash block after :data:`HEADING` in README.md."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    m = re.search(r"```bash\n(.*?)```", text[text.index(HEADING):], flags=re.S)
    assert m, f"no ```bash block after {HEADING!r}"
    return m.group(1)


def test_block_reaches_verify_and_uses_the_store_recorded_signing():
    block = readme_block()
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert "reports verify" in block.replace("$R verify", "reports verify") and lines[-1].startswith("$R verify")
    assert "$R sign --sample" in block and "$R draft" in block and "review confirm" in block
    assert "export LEUKO_LAB_CA=" in block  # keys are accepted only from the configured lab CA


@pytest.mark.slow
def test_readme_command_block_runs_as_written(tmp_path):
    shared_data("wbc-smear", "bccd")
    shared = PROJECT_ROOT.parent / "shared"
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    for name in (".venv", "models", "phenotyping", "reports"):
        (root / name).symlink_to(PROJECT_ROOT / name)
    (root / "commands.sh").write_text(readme_block(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKO_")}
    env.update(LEUKO_DB_PATH=str(root / "var" / "lab.duckdb"), LEUKO_DEVICE="cpu")
    p = subprocess.run(["bash", "-e", "commands.sh"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n--- stderr ---\n{p.stderr[-4000:]}"
    verified = json.loads(p.stdout[p.stdout.rindex("{\n  \"signed\""):])
    assert verified["signed"] and verified["valid"] and verified["intact"] and verified["trusted"]
    assert verified["certified"] and verified["reasons"] == []
    assert verified["signer"] == "Dr A. Signer"

    from phenotyping.store import Store

    with Store(root / "var" / "lab.duckdb", read_only=True) as store:
        rv = store.get_report_version("BCCD-1")
        assert rv.signed_at is not None and rv.signed_by == "sig" and rv.status == "final"
        assert store.get_sample("BCCD-1").status.value == "signed"
        actors = {e.action: e.actor for e in store.list_audit(sample_id="BCCD-1", limit=10_000)}
        assert actors["report.draft"] == "rev" and actors["cell.reclassify"] == "rev"
