"""Zoo families: the architectures the model zoo trains, registered with ``register_family``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import WeightAtlasError
from core.models.io import config_of, timm_export_config
from core.models.native import CNN, MLP
from core.models.registry import _timm_model, empty_model
from core.models.taskinfo import CLS_ID, PAD_ID, TaskInfo

# zoo families


@dataclass(frozen=True)
class Family:
    """A zoo family: a config maker sized by ``width`` and ``depth`` for one task's shapes.

    ``widths`` / ``depths`` are the sizes the zoo draws from (small to large); ``kinds`` the
    task kinds it can train on; ``default_task`` the task ``resolve_arch`` evaluates on.
    ``epoch_scale`` / ``lr_scale`` multiply a zoo run's epochs and learning rate: small
    transformers need more and larger steps than CNNs on tiny data sets.
    """

    name: str
    library: str
    make_config: Callable[[TaskInfo, int, int], dict[str, Any]]
    kinds: tuple[str, ...]
    default_task: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    epoch_scale: int = 1
    lr_scale: float = 1.0

    def config(self, task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
        """The ``config.json`` dict of this family for ``task`` at ``width`` x ``depth``."""
        if task.kind not in self.kinds:
            raise WeightAtlasError(
                f"family {self.name!r} cannot train on {task.kind} task {task.name!r}"
            )
        return self.make_config(task, width, depth)


FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    library: str,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    kinds: tuple[str, ...] = ("image",),
    default_task: str = "digits10",
    epoch_scale: int = 1,
    lr_scale: float = 1.0,
) -> Callable[
    [Callable[[TaskInfo, int, int], dict[str, Any]]], Callable[[TaskInfo, int, int], dict[str, Any]]
]:
    """Decorator registering a zoo family's config maker ``fn(task, width, depth) -> config``."""

    def deco(
        fn: Callable[[TaskInfo, int, int], dict[str, Any]],
    ) -> Callable[[TaskInfo, int, int], dict[str, Any]]:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} registered twice")
        FAMILIES[name] = Family(
            name, library, fn, kinds, default_task, widths, depths, epoch_scale, lr_scale
        )
        return fn

    return deco


def build_family(name: str, task: TaskInfo, width: int, depth: int, seed: int) -> nn.Module:
    """A freshly initialized model of family ``name`` for ``task`` (init seeded by ``seed``)."""
    if name not in FAMILIES:
        raise WeightAtlasError(f"unknown zoo family {name!r}; choose from {', '.join(FAMILIES)}")
    config = FAMILIES[name].config(task, width, depth)
    return build_from_config(config, seed)


def build_from_config(config: dict[str, Any], seed: int) -> nn.Module:
    """``empty_model(config)`` with its random init seeded, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = empty_model(config)
    return model


def _hf(cls_name: str, arch: str, task: TaskInfo, **kwargs: Any) -> dict[str, Any]:
    import transformers

    cfg = getattr(transformers, cls_name)(
        num_labels=task.num_classes, architectures=[arch], **kwargs
    )
    return cfg.to_dict()


def _patch(task: TaskInfo) -> int:
    """Patch size giving a 4x4 token grid (8x8 -> 2, 16x16 -> 4)."""
    return max(1, task.img_size // 4)


@register_family("resnet", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _resnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ResNetConfig",
        "ResNetForImageClassification",
        task,
        num_channels=task.in_chans,
        embedding_size=width,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        layer_type="basic",
        downsample_in_first_stage=False,
    )


@register_family("convnext", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _convnext(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ConvNextConfig",
        "ConvNextForImageClassification",
        task,
        num_channels=task.in_chans,
        patch_size=_patch(task),
        num_stages=2,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        image_size=task.img_size,
    )


@register_family(
    "vit",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    epoch_scale=2,
    lr_scale=2.0,
)
def _vit(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ViTConfig",
        "ViTForImageClassification",
        task,
        num_channels=task.in_chans,
        image_size=task.img_size,
        patch_size=_patch(task),
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=2,
        intermediate_size=2 * width,
        encoder_stride=_patch(task),
    )


@register_family("swin", library="transformers", widths=(8, 16, 24), depths=(1, 2), epoch_scale=2)
def _swin(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "SwinConfig",
        "SwinForImageClassification",
        task,
        num_channels=task.in_chans,
        image_size=task.img_size,
        patch_size=_patch(task),
        embed_dim=width,
        depths=[depth, depth],
        num_heads=[1, 2],
        window_size=2,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        encoder_stride=2 * _patch(task),
    )


@register_family("regnet", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _regnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "RegNetConfig",
        "RegNetForImageClassification",
        task,
        num_channels=task.in_chans,
        embedding_size=width,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        groups_width=8,
        layer_type="x",
        downsample_in_first_stage=False,
    )


def _timm(arch: str, task: TaskInfo, **model_args: Any) -> dict[str, Any]:
    """timm's Hub config of ``arch`` built with ``model_args`` (built once to export it)."""
    with torch.random.fork_rng(devices=[]):
        model = _timm_model({"architecture": arch, "model_args": dict(model_args)})
    return timm_export_config(model)


@register_family("timm-resnet", library="timm", widths=(8, 16, 24), depths=(1, 2))
def _timm_resnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "resnet18",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        layers=[depth] * 4,
        channels=[width, width, 2 * width, 2 * width],
        stem_width=width,
    )


@register_family(
    "timm-vit", library="timm", widths=(16, 32, 48), depths=(1, 2, 3), epoch_scale=2, lr_scale=2.0
)
def _timm_vit(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "vit_tiny_patch16_224",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        img_size=task.img_size,
        patch_size=_patch(task),
        embed_dim=width,
        depth=depth,
        num_heads=2,
        mlp_ratio=2.0,
        class_token=False,
        global_pool="avg",
    )


@register_family("timm-convnext", library="timm", widths=(8, 16, 24), depths=(1, 2))
def _timm_convnext(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "convnext_atto",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        patch_size=1,  # timm's ConvNeXt reaches stride 32 from any stem stride > 1
        depths=[depth] * 4,
        dims=[width, width, 2 * width, 2 * width],
    )


@register_family("cnn", library="weightatlas", widths=(8, 16, 32), depths=(2, 3))
def _cnn(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return config_of(CNN(task.in_chans, task.num_classes, width, depth), "weightatlas")


@register_family(
    "mlp",
    library="weightatlas",
    widths=(16, 32, 64),
    depths=(1, 2, 3),
    kinds=("image", "tabular"),
    default_task="wine",
)
def _mlp(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return config_of(MLP(task.n_features, task.num_classes, width, depth), "weightatlas")


# Sequence families (issue 17): token-id classifiers sized for the procedural sequence tasks
# (``core.zoos.tasks.SEQUENCE_TASKS``: vocabulary of a few symbols, 13-21 positions). Dropout is
# off: these models are tiny and train for a few epochs on ~1,000 sequences.


def _seq_common(task: TaskInfo) -> dict[str, Any]:

    return dict(vocab_size=task.vocab_size, pad_token_id=PAD_ID, bos_token_id=CLS_ID)


@register_family(
    "bert",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    kinds=("sequence",),
    default_task="seq-brackets",
    epoch_scale=2,
    lr_scale=4.0,  # a [CLS]-pooled encoder needs larger steps than the last-token decoder
)
def _bert(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "BertConfig",
        "BertForSequenceClassification",
        task,
        **_seq_common(task),
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=task.seq_len,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@register_family(
    "gpt2",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    kinds=("sequence",),
    default_task="seq-brackets",
    epoch_scale=2,
    lr_scale=2.0,
)
def _gpt2(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "GPT2Config",
        "GPT2ForSequenceClassification",
        task,
        **_seq_common(task),
        eos_token_id=_seq_common(task)["bos_token_id"],
        n_embd=width,
        n_layer=depth,
        n_head=2,
        n_inner=2 * width,
        n_positions=task.seq_len,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
    )


# ---------------------------------------------------------------------------------------------
