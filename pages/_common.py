"""What every page shares: the one store connection of this server process."""

from __future__ import annotations

import streamlit as st

from phenotyping.settings import get_settings
from phenotyping.store import Store


@st.cache_resource(show_spinner=False)
def get_store() -> Store:
    """The server's single read-write connection (DuckDB allows one writer per file); a cursor per thread."""
    return Store.from_settings(get_settings())
