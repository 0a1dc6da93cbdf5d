"""core.generation.build: generated weights into a loadable target model."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_backbone

from core.backbone.model import Backbone
from core.generation.build import (
    build_generated,
    condition_batchnorm,
    decode_latents,
    encode_models,
)
from core.generation.config import SampleConfig
from core.generation.draws import draw_latents
from core.generation.prompts import model_tokens, resolve_target
from core.models.io import load_model_dir


def _generate_into(spec: str, backbone: Backbone, k: int = 2, task: str | None = None) -> tuple:
    target = resolve_target(spec, "dense", backbone.cfg.token_size, task=task)
    cfg = SampleConfig(batch_size=512)
    prompt = target.arch.build(3)
    z = encode_models(backbone, [model_tokens(prompt, target)], target, cfg)
    draws, _ = draw_latents(z, k, torch.Generator().manual_seed(0))
    tokens = decode_latents(backbone, draws, target, cfg)
    return target, tokens


def _families() -> list[str]:
    from core.models.families import FAMILIES

    return [f"zoo:{name}" for name in FAMILIES]


@pytest.mark.parametrize("spec", [*_families(), "timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_generated_state_dict_loads_into_target(spec, tmp_path):
    from core.tokens.plan import detokenize

    backbone = tiny_backbone()
    target, tokens = _generate_into(spec, backbone)
    fresh = target.arch.build(0)
    for i in range(len(tokens)):
        model = build_generated(tokens[i], target, seed=0)  # strict: every key and shape
        sd, ref = model.state_dict(), fresh.state_dict()
        assert list(sd) == list(ref)
        assert all(sd[k].shape == ref[k].shape and sd[k].dtype == ref[k].dtype for k in sd)
        generated = detokenize(tokens[i], target.layers)
        for name, t in generated.items():
            assert torch.equal(sd[name], t), name  # the decoded values, not the fresh init
        assert not torch.equal(sd[target.layers[0].name], ref[target.layers[0].name])
    if spec.startswith("zoo:"):  # Hub-format round trip (the big timm models are covered above)
        out = target.arch.save(model, tmp_path / "gen")
        loaded = load_model_dir(out).model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_bn_conditioning_changes_only_buffers():
    backbone = tiny_backbone()
    target, tokens = _generate_into("zoo:resnet", backbone, k=1)
    model = build_generated(tokens[0], target, seed=0)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    n = condition_batchnorm(model, target, batches=2, batch_size=64, seed=0)
    assert n > 0
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), f"trainable {k} changed"
    changed = [k for k, v in model.named_buffers() if not torch.equal(v, buffers[k])]
    assert any(k.endswith("running_mean") for k in changed)
    assert any(k.endswith("running_var") for k in changed)
    assert not model.training
    # the statistics are the train-split batches' statistics, not the fresh init's (0 / 1)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
