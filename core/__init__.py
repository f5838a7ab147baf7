"""Domain layer of Car Grouping: schema, project store, sampling, acquisition, the AL loop.

Nothing in ``core`` imports Streamlit; the UI in ``app/`` calls into here.
"""
