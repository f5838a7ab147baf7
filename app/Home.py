"""Car Grouping dashboard entry point: ``streamlit run app/Home.py -- --workspace DIR``.

Only sets up navigation; every page lives in ``app/views`` and draws through ``app/ui.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ui  # noqa: E402
import signin  # noqa: E402

# a drawn icon served by the app: a :material/...: one would be fetched from fonts.gstatic.com
st.set_page_config(page_title="Car Grouping", page_icon=ui.page_icon(), layout="wide")
signin.gate()  # no page is drawn, or even imported, before a sign-in where one is needed
pages = [st.Page(f, title=t, icon=i, default=(n == 0)) for n, (f, t, i) in enumerate(ui.PAGES)]
st.navigation(pages).run()
