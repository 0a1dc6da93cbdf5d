"""Shown when the chosen path is not an atlas: which path was looked for, a way back to the
demo atlas, and how to make an atlas of your own."""

from __future__ import annotations

import streamlit as st

from core.atlas import Atlas
from explorer.common import (
    DEFAULT_ATLAS,
    DEMO_ATLAS,
    README_SECTION,
    atlas_status,
    back_to_demo,
    display_path,
    resolve_atlas,
)

typed = str(st.session_state.get("atlas_path") or "")
st.title("No atlas to show yet")
st.error(
    f"Looked for an atlas at `{display_path(resolve_atlas(typed)) if typed.strip() else '(empty)'}`"
    f": {atlas_status(typed)}",
    icon=":material/folder_off:",
)
default_ok = atlas_status(DEFAULT_ATLAS) is None
if default_ok and resolve_atlas(typed) != resolve_atlas(DEFAULT_ATLAS):
    st.button(
        f"Open the demo atlas ({DEFAULT_ATLAS})",
        type="primary",
        icon=":material/undo:",
        key="no_atlas_back",
        on_click=back_to_demo,
    )
if not Atlas(DEMO_ATLAS).info_path.exists():
    st.markdown(
        """
**Build the demo atlas** (a few minutes on a laptop CPU, no network), from the repository root:

```bash
weightatlas demo --out assets/demo
```
"""
    )
st.markdown(
    f"""
**Make an atlas of your own models**: models already in your Hugging Face cache (safetensors
weights of transformers or timm models, vision and text, or the zoo's models; pickled weights and
remote code are refused, each with a reason in the manifest):

```bash
weightatlas collect ATLAS --source hf-cache   # or --source hub, or a folder
weightatlas tokenize ATLAS
weightatlas train ATLAS
weightatlas embed ATLAS
```

or a small zoo trained here (`weightatlas zoo --preset ci --out ZOO`, then
`weightatlas collect ATLAS --source ZOO` and the same three stages). Then type `ATLAS` into the
sidebar (from any folder: the atlases your commands ran on are remembered), or start the app with `WEIGHTATLAS_ATLAS=ATLAS`. More: {README_SECTION}.
"""
)
if DEMO_ATLAS.exists():
    st.caption(f"The embedded demo atlas is `{display_path(DEMO_ATLAS)}`.")
