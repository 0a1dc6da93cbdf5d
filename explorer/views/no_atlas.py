"""Shown when the chosen path is not an atlas: which path was looked for and how to build one."""

from __future__ import annotations

import streamlit as st

from explorer.common import DEFAULT_ATLAS, ROOT, atlas_status, current_atlas

path = current_atlas()
st.title("No atlas to show yet")
st.error(
    f"Looked for an atlas at `{path}`: {atlas_status(str(path))}", icon=":material/folder_off:"
)
st.markdown(
    f"""
The explorer opens on the embedded demo atlas (`{DEFAULT_ATLAS}`). Build it, or point the
sidebar at any atlas directory the pipeline produced.

**Build the demo atlas** (a few minutes on a laptop CPU, no network), from `{ROOT}`:

```bash
weightatlas demo --out assets/demo
```

**Or build your own atlas** step by step:

```bash
weightatlas zoo --preset ci --out ZOO
weightatlas collect ATLAS --source ZOO
weightatlas tokenize ATLAS --scheme dense
weightatlas train ATLAS --preset ci
weightatlas embed ATLAS
```

then type `ATLAS` into the sidebar, or start the app with `WEIGHTATLAS_ATLAS=ATLAS`.
"""
)
