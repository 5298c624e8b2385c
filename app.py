"""Label-free leukocyte review: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="Leukocyte review", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/samples.py", title="Samples", icon="🧪", default=True),
]
st.navigation(pages).run()
