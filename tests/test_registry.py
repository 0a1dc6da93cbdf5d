"""core.models.registry: families of configs and the trainable names of a model."""

from __future__ import annotations

import pytest
import torch

from core.models.families import build_family
from core.models.registry import family_of, trainable_names
from core.zoos.tasks import get_task


def test_trainable_names_separate_buffers_from_parameters():
    model = build_family("resnet", get_task("digits10").info, 8, 1, seed=0)
    names = trainable_names(model)
    sd = model.state_dict()
    buffers = set(sd) - names
    assert names == {n for n, _ in model.named_parameters()}
    assert any(n.endswith("running_mean") for n in buffers)
    assert any(n.endswith("num_batches_tracked") for n in buffers)
    assert all(sd[n].dtype == torch.float32 for n in names)
    mlp = build_family("mlp", get_task("wine").info, 16, 1, seed=0)
    assert trainable_names(mlp) == set(mlp.state_dict())


@pytest.mark.parametrize(
    "config,family",
    [
        ({"architecture": "resnet50d"}, "resnet"),
        ({"architecture": "vit_tiny_patch16_224"}, "vit"),
        ({"architecture": "convnextv2_atto"}, "convnext"),
        ({"architecture": "mobilenetv3_small_100"}, "mobilenet"),
        ({"architecture": "tf_efficientnet_b0"}, "efficientnet"),
        ({"model_type": "deit"}, "vit"),
        ({"model_type": "swinv2"}, "swin"),
        ({"model_type": "mobilenet_v2"}, "mobilenet"),
        ({"model_type": "resnet"}, "resnet"),
        ({"library_name": "weightatlas", "architecture": "cnn"}, "cnn"),
    ],
)
def test_family_of(config, family):
    assert family_of(config) == family
