"""core.generation.evaluation: reconstruction accuracy of decoded weights."""

from __future__ import annotations

import pytest
import torch

from core.atlas import Atlas
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig, save_backbone
from core.config import build_config


def test_encode_decode_accuracy_exact_through_an_identity_backbone(probe_atlas, tmp_path):
    """A skip backbone with room for every feature (latent 80 >= 64 + 2, a test device, not a
    preset), its skip set to the tokens' PCA, decodes every weight back (accuracy unchanged,
    R² 1); the atlas' random plain backbone does not (R² far below 1)."""
    from core.generation.evaluation import reconstruction_accuracy
    from core.tokens.store import TokenStore

    cfg = build_config(
        BackboneConfig, BACKBONE_PRESETS, "ci",
        overrides={"token_size": 64, "latent_dim": 80, "skip": True},
    )  # fmt: skip
    torch.manual_seed(0)
    model = Backbone(cfg)
    store = TokenStore(Atlas(probe_atlas).tokens_dir)
    toks = [
        torch.as_tensor(store.get(m).tokens) * torch.as_tensor(store.get(m).mask) for m in store.ids
    ]
    assert model.init_skip_pca(torch.cat(toks)) == pytest.approx(1.0)
    ident = save_backbone(model, tmp_path / "identity")
    splits = ("train", "val", "test")
    rows = reconstruction_accuracy(probe_atlas, "cnn", "digits10", splits, backbone_dir=ident)
    cnn = [
        r for r in Atlas(probe_atlas).accepted()
        if r["labels"]["family"] == "cnn" and r["labels"]["task"] == "digits10"
    ]  # fmt: skip
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in cnn)
    for r in rows:
        assert r["r2"] == pytest.approx(1.0, abs=1e-5)
        assert r["accuracy_decoded"] == pytest.approx(r["accuracy_original"], abs=1e-9)
        assert 0.0 <= r["accuracy_decoded_bn"] <= 1.0  # the CNNs have batch norm
    random = reconstruction_accuracy(probe_atlas, "cnn", "digits10", splits)
    assert all(r["r2"] < 0.5 for r in random)
