"""Weight Atlas explorer: ``streamlit run explorer/app.py``.

Opens on the embedded demo atlas (``assets/demo``, or ``$WEIGHTATLAS_ATLAS``) with no network.
The sidebar picks any other atlas directory. Pages: Atlas (the latent-space map), Layers
(per-layer weights and reconstructions) and Generate (new weights for an architecture).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from explorer.common import after_run, atlas_picker_ui, atlas_status  # noqa: E402

# a local image: a ":material/...:" page icon makes the browser fetch the favicon from a font
# CDN (fails offline)
st.set_page_config(
    page_title="Weight Atlas", page_icon=str(ROOT / "explorer" / "favicon.png"), layout="wide"
)

path = atlas_picker_ui()
problem = atlas_status(path)
views = Path("views")
if problem is None:
    pages = [
        st.Page(views / "atlas.py", title="Atlas", icon=":material/scatter_plot:", default=True),
        st.Page(views / "layers.py", title="Layers", icon=":material/stacked_bar_chart:"),
        st.Page(views / "generate.py", title="Generate", icon=":material/auto_awesome:"),
    ]
else:
    pages = [st.Page(views / "no_atlas.py", title="No atlas", icon=":material/help:")]
st.navigation(pages).run()
# torch-backed modules load in the background after the page has been sent: started before
# it, their import held the interpreter while the first map was built (a cold first paint of
# 13-16 s against 4 s for a trivial page on a loaded 2-core machine; issue 27); not after the
# server's first run, while the browser still loads plotly.js and draws the first map
after_run()
