"""The timm architectures the Generate page offers, and whether one runs on a task.

Specs (``zoo:``, ``timm:``, ``hf:``) are resolved by ``core.collection.specs.resolve_arch``.
"""

from __future__ import annotations

import warnings
from typing import Any

from core.zoos.tasks import get_task

# ---------------------------------------------------------------------------------------------
# timm architectures the Generate page offers

# small timm CNNs that build and run on the zoo's 8x8 / 16x16 one-channel tasks (checked by
# tests/test_app.py through timm_fit); the registry's other names are reached by search
TIMM_SUGGESTED = (
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet26",
    "resnet34",
    "seresnet18",
    "mobilenetv3_small_050",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv2_050",
    "mobilenetv2_100",
    "efficientnet_b0",
    "efficientnet_lite0",
    "lcnet_050",
    "lcnet_100",
    "regnetx_002",
    "regnety_002",
    "ghostnet_050",
    "mnasnet_small",
    "mobilevit_xxs",
    "mixnet_s",
    "rexnet_100",
    "tinynet_e",
)
MAX_GENERATE_PARAMS = 50_000_000  # larger targets are refused before anything is built


def timm_search(query: str, limit: int = 60) -> list[str]:
    """timm registry names containing ``query`` (case-insensitive); suggested ones first."""
    import timm

    q = query.strip().lower()
    names = [n for n in timm.list_models() if q in n.lower()]
    first = [n for n in TIMM_SUGGESTED if n in names]
    return (first + [n for n in names if n not in first])[:limit]


def timm_fit(name: str, task: str) -> dict[str, Any]:
    """Can timm model ``name`` be built and trained for ``task`` here? Sized on the meta device.

    Builds the model with the task's classes and input channels on PyTorch's meta device (no
    memory is allocated) and runs one forward pass on a meta batch of the task's input shape.

    Returns:
        ``{"name", "params", "ok", "reason"}``: ``ok`` False with a one-line ``reason`` when
        the task is tabular, the model does not take the task's input size, or it has more than
        :data:`MAX_GENERATE_PARAMS` parameters.
    """

    import timm
    import torch

    out: dict[str, Any] = {"name": name, "params": None, "ok": False, "reason": None}
    if not timm.is_model(name):
        out["reason"] = f"timm has no model {name!r}"
        return out
    info = get_task(task).info
    if info.kind != "image":
        out["reason"] = f"timm models take images; {task} is a {info.kind} task"
        return out
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(
                name, pretrained=False, num_classes=info.num_classes, in_chans=info.in_chans
            )
            out["params"] = int(sum(p.numel() for p in model.parameters()))
            if out["params"] > MAX_GENERATE_PARAMS:
                out["reason"] = (
                    f"{out['params'] / 1e6:.1f} M parameters; the Generate page takes up to "
                    f"{MAX_GENERATE_PARAMS / 1e6:.0f} M"
                )
                return out
            model.eval()
            model(torch.empty(2, *info.input_shape))
    except Exception as e:  # any failure of the third-party build or forward: not offered
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        out["reason"] = (
            f"does not run on {task}'s {'x'.join(map(str, info.input_shape))} input: {first}"
        )
        return out
    out["ok"] = True
    return out
