"""Label-free leukocyte review: ``streamlit run app.py``. Pages live in pages/; what they share in pages/_common.py."""

import streamlit as st

from pages._common import nav_pages

st.set_page_config(page_title="Leukocyte review", page_icon="🔬", layout="wide")
st.navigation(nav_pages()).run()
