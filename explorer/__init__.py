"""The Weight Atlas explorer: a Streamlit app over one atlas directory (UI only; computation is in core)."""
