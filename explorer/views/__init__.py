"""Pages of the explorer, one script per page (run by ``st.navigation`` from explorer/app.py)."""
