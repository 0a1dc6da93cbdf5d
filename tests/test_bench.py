"""Tests of explorer.bench (``weightatlas bench app``): the map-alone baseline page."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from core.catalog import COLOUR_BY, map_table  # noqa: E402
from explorer.bench import map_only_page  # noqa: E402
from explorer.figures import MAP_HEIGHT, map_figure  # noqa: E402


def test_map_only_page_draws_the_atlas_pages_first_map(syn):
    """The baseline page draws the figure the Atlas page opens with (same traces, every model,
    same height) and nothing else."""
    at = AppTest.from_string(map_only_page(syn), default_timeout=60).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 1 and not at.markdown and not at.selectbox
    table = map_table(syn)
    want = map_figure(table, "umap", COLOUR_BY[0], np.ones(len(table), bool), height=MAP_HEIGHT)
    drawn = json.loads(
        charts[0].proto.spec
    )  # x and y as typed arrays; one customdata row per point
    assert [(t["name"], len(t["customdata"])) for t in drawn["data"]] == [
        (t.name, len(t.x)) for t in want.data
    ]
    assert sum(len(t["customdata"]) for t in drawn["data"]) == len(table)
    assert drawn["layout"]["height"] == MAP_HEIGHT
