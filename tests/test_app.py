"""Every page of the app launches without an exception (Streamlit AppTest)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKO_DB_PATH", str(tmp_path / "app.duckdb"))
    from phenotyping.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_app_starts_on_samples_page(app_env):
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Samples"
