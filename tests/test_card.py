"""core.generation.card: the generated model's card and folder (``GeneratedCard``)."""

from __future__ import annotations

import pytest
from huggingface_hub import metadata_load

from core.atlas import GeneratedCard
from core.errors import WeightAtlasError
from core.generation.card import card_text, write_generated_dir
from core.generation.draws import Draw
from core.generation.prompts import resolve_target
from core.models.io import load_model_dir


def _info(name: str) -> dict:
    return {
        "name": name,
        "backbone": "abc123",
        "prompts": ["weightatlas-zoo/mlp-digits10-0"],
        "prompt_source": "atlas",
        "prior": "kde",
        "mode": "independent",
        "seed": 3,
        "n": 4,
        "bootstrap_rounds": 0,
        "test_accuracy": 0.625,
        "input_size": [1, 8, 8],
    }


def test_written_folder_card_reads_back_as_the_hub_reads_it(tmp_path):
    target = resolve_target("zoo:mlp", "dense", 64, task="digits10")
    model = target.fresh(0)
    cand = Draw(z=None, model=model, val=float("nan"), round=0, draw=2)  # an unscored draw
    out = write_generated_dir(
        target, model, tmp_path / "gen" / "m--00", card_text(target, cand, 0, _info("m--00"))
    )
    card = GeneratedCard(out)
    assert card.exists() and load_model_dir(out).family == "mlp"
    block = card.block()
    assert block["generated"] is True and block["arch"] == "zoo:mlp" and block["task"] == "digits10"
    assert block["val_accuracy"] is None  # NaN is written as null (YAML has no NaN)
    assert block["test_accuracy"] == 0.625 and block["draw"] == 2 and block["seed"] == 3
    assert card.test_accuracy() == (0.625, "digits10")
    # the Hub's own parser reads the same front matter
    assert card.meta() == metadata_load(card.path)
    assert "at input size 1x8x8" in card.text()
    # no temp folder left beside it
    assert [p.name for p in (tmp_path / "gen").iterdir()] == ["m--00"]


def test_rewrite_replaces_the_card_atomically(tmp_path):
    card = GeneratedCard(tmp_path)
    card.write("---\nweightatlas:\n  test_accuracy: 0.5\n  task: digits10\n---\n\n# m\n")
    assert card.test_accuracy() == (0.5, "digits10")
    card.write("---\nweightatlas:\n  test_accuracy: 0.75\n---\n\n# m\n")
    assert card.block() == {"test_accuracy": 0.75}
    assert [p.name for p in tmp_path.iterdir()] == [GeneratedCard.CARD]


@pytest.mark.parametrize(
    "text",
    [
        None,  # no card
        "# no front matter\n",
        "---\nweightatlas: [unclosed\n---\n",  # malformed YAML
        "---\n- a list\n---\n",  # front matter that is not a mapping
        "---\nweightatlas: 3\n---\n",  # a block that is not a mapping
        "---\nweightatlas: {}\n",  # never closed
    ],
)
def test_missing_or_malformed_cards_read_as_empty(tmp_path, text):
    card = GeneratedCard(tmp_path)
    if text is not None:
        card.path.write_text(text)
    assert card.block() == {}
    with pytest.raises(WeightAtlasError, match="records no test_accuracy"):
        card.test_accuracy()


def test_yaml_tags_are_not_constructed(tmp_path):
    card = GeneratedCard(tmp_path)
    card.write("---\nweightatlas: !!python/object/apply:os.system ['true']\n---\n")
    assert card.meta() == {}  # safe_load refuses the tag: no object is built, nothing runs
