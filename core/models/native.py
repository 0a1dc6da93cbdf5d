"""Our own small models (library ``weightatlas``): an MLP and a CNN, registered by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.errors import RejectedModel

# our own models (library "weightatlas")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}
NATIVE_MODELS: dict[str, type[nn.Module]] = {}


def register_native(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Decorator registering one of our own model classes under ``architecture`` ``name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        NATIVE_MODELS[name] = cls
        cls.architecture = name
        return cls

    return deco


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise RejectedModel("bad config", f"unknown activation {name!r}")
    return ACTIVATIONS[name]()


@register_native("mlp")
class MLP(nn.Module):
    """Fully connected classifier on flattened inputs: ``depth`` hidden layers of ``hidden_size``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int,
        depth: int,
        activation: str = "relu",
    ):
        super().__init__()
        self.model_args = dict(
            in_features=in_features,
            num_classes=num_classes,
            hidden_size=hidden_size,
            depth=depth,
            activation=activation,
        )
        sizes = [in_features] + [hidden_size] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = _activation(activation)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, F)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


@register_native("cnn")
class CNN(nn.Module):
    """Small plain CNN (the classic model-zoo CNN): ``depth`` 3x3 conv + BN + act blocks of
    ``width`` channels (doubling after the first), 2x2 max-pooling after the first two, global
    average pooling and a linear head."""

    def __init__(
        self, in_chans: int, num_classes: int, width: int, depth: int, activation: str = "relu"
    ):
        super().__init__()
        self.model_args = dict(
            in_chans=in_chans,
            num_classes=num_classes,
            width=width,
            depth=depth,
            activation=activation,
        )
        blocks = []
        c_in = in_chans
        for i in range(depth):
            c_out = width if i == 0 else 2 * width
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    _activation(activation),
                    nn.MaxPool2d(2) if i < 2 else nn.Identity(),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.blocks(x).mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
