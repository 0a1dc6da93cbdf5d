"""A generated model's folder under ``ATLAS/generated/``: ``GeneratedCard`` owns its card
(``README.md``, whose front matter's ``weightatlas:`` block records the provenance) and writes
the folder; ``card_text`` renders the card, ``written_config`` its ``config.json``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from core.atlas import atomic_write_bytes
from core.errors import WeightAtlasError
from core.generation.draws import Draw
from core.generation.prompts import Target, run_side
from core.generation.roundtrip import finite_or_none
from core.models.io import render_card, save_model_dir
from core.zoos.tasks import PIPELINE_TAGS, get_task


@dataclass(frozen=True)
class GeneratedCard:
    """A generated model's card: ``README.md`` in the model's folder (``ATLAS/generated/NAME/``).

    YAML front matter (the Hub's metadata: library, tags, datasets, ``model-index``) whose
    ``weightatlas:`` block records how the model was made and scored (``card_text``), then
    markdown. The one reader and writer of these cards: ``sample`` writes them; the Generate
    page, ``evaluate_generation``, the ablations, the modality experiment and the benches read
    them here.
    """

    dir: Path
    CARD = "README.md"
    BLOCK = "weightatlas"  # the front matter's key of the provenance block

    @property
    def path(self) -> Path:
        return self.dir / self.CARD

    def exists(self) -> bool:
        """True when the folder has a card."""
        return self.path.is_file()

    def text(self) -> str:
        """The card as written (markdown with its front matter); ``""`` when absent."""
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return ""

    def meta(self) -> dict[str, Any]:
        """The front matter, parsed with ``yaml.safe_load`` only (plain data, no object
        construction); ``{}`` when the card is absent or its front matter is malformed."""
        text = self.text()
        if not text.startswith("---"):
            return {}
        end = text.find("\n---", 3)
        if end < 0:
            return {}
        try:
            meta = yaml.safe_load(text[3:end])
        except yaml.YAMLError:
            return {}
        return meta if isinstance(meta, dict) else {}

    def block(self) -> dict[str, Any]:
        """The ``weightatlas:`` block (empty if none)."""
        block = self.meta().get(self.BLOCK)
        return block if isinstance(block, dict) else {}

    def test_accuracy(self) -> tuple[float, str | None]:
        """The recorded test accuracy and task; refused in one line when the card has none."""
        block = self.block()
        acc = block.get("test_accuracy")
        if not isinstance(acc, int | float):
            raise WeightAtlasError(f"{self.path} records no test_accuracy")
        return float(acc), block.get("task")

    def write(self, text: str) -> None:
        """Write the card atomically."""
        atomic_write_bytes(self.path, text.encode())


def card_text(target: Target, cand: Draw, rank: int, info: dict[str, Any]) -> str:
    """The card of kept model ``cand`` (0-based ``rank``): Hub metadata, the ``weightatlas:``
    block (``info``'s fields: provenance, scores, timing, chance baseline, fidelity) and a
    paragraph saying how it was made and how it scores."""
    task = get_task(target.task).info if target.task is not None else None
    dataset = task.dataset if task is not None else None
    val, test = finite_or_none(cand.val), finite_or_none(info["test_accuracy"])
    block = {
        "generated": True,
        "arch": target.arch.spec,
        "family": target.arch.family,
        "task": target.task,
        "dataset": dataset,
        "scored": task is not None,
        "val_accuracy": val,
        "test_accuracy": test,
        "rank": rank,
        "round": cand.round,
        "draw": cand.draw,
        **{k: v for k, v in info.items() if k != "test_accuracy"},
    }
    if target.note:
        block["note"] = target.note
    meta: dict[str, Any] = {
        "library_name": target.arch.library,
        "tags": [t for t in ("weightatlas", "generated", target.arch.family, target.task) if t],
    }
    if task is not None:
        meta["datasets"] = [task.dataset]
        meta["model-index"] = [
            {
                "name": info["name"],
                "results": [
                    {
                        "task": {"type": PIPELINE_TAGS[task.kind]},
                        "dataset": {"name": task.dataset, "type": task.dataset},
                        "metrics": [
                            {"type": "accuracy", "name": "val_accuracy", "value": val},
                            {"type": "accuracy", "name": "test_accuracy", "value": test},
                        ],
                    }
                ],
            }
        ]
    meta["weightatlas"] = block
    head = (
        f"Generated by Weight Atlas from the latent space of backbone `{info['backbone']}` with "
        f"{len(info['prompts'])} {info['prompt_source']} prompt example(s), prior `{info['prior']}`, "
        f"mode `{info['mode']}`, seed {info['seed']}, kept rank {rank + 1} of {info['n']} draws "
        f"({info['bootstrap_rounds']} bootstrap rounds). "
    )
    if task is not None:
        body = head + (
            f"Batch-norm statistics were conditioned on the `{target.task}` train split"
            + (
                f" at input size {'x'.join(map(str, info['input_size']))}: feed inputs of this "
                "size (the config's `input_size`); at other sizes the statistics do not hold. "
                if info.get("input_size")
                else ". "
            )
            + f"Validation accuracy {cand.val:.4f}, test accuracy {info['test_accuracy']:.4f} "
            "(no fine-tuning)."
        )
        if "chance_accuracy" in info:
            body += (
                f" {'**At chance level**' if info.get('at_chance') else 'Above chance'}: chance "
                f"{info['chance_accuracy']:.4f} (threshold {info['chance_threshold']:.4f}), "
                f"random init {info['random_init_val_accuracy']:.4f} (validation)."
            )
        title = f"Generated {target.arch.spec} for {target.task}"
    else:
        body = head + f"**Unscored**: {target.note}"
        title = f"Generated {target.arch.spec} (unscored, no task)"
    return render_card(meta, title, body)


def input_size(model: nn.Module, target: Target) -> list[int] | None:
    """``[C, H, W]`` of the inputs a generated image model was conditioned and scored on.

    The task's own side, or the side :func:`run_side` chose (images are resized to it). None
    for non-image tasks and unscored targets.
    """
    if target.task is None:
        return None
    info = get_task(target.task).info
    if info.kind != "image":
        return None
    side = run_side(model, target) or info.img_size
    return [int(info.in_chans), int(side), int(side)]


def written_config(model: nn.Module, target: Target) -> dict[str, Any]:
    """The target's ``config.json``, with a timm model's ``pretrained_cfg.input_size`` set to
    the size its batch-norm statistics were estimated at (:func:`input_size`).

    timm's export keeps the architecture's default (224 px). A model conditioned on 8x8 images
    and fed 224 px ones gives meaningless outputs (issue 17: a ``mobilenetv3_small_075`` with
    batch norm estimated at 8 px gives logits with std 1.9 at 8 px, 6e10 at 32 px, 2e14 at
    224 px: at 8 px its maps are 1x1 from the second block on, at 224 px the inputs of its batch
    norms exceed their running std 4x at block 1, 1e3x at block 2, 8e13x at block 5), so the
    config names the size that works.
    """
    config = copy.deepcopy(target.arch.config)
    size = input_size(model, target)
    pcfg = config.get("pretrained_cfg") if target.arch.library == "timm" else None
    if size is not None and isinstance(pcfg, dict):
        for key in ("input_size", "test_input_size"):
            if isinstance(pcfg.get(key), list) and len(pcfg[key]) == 3:
                pcfg[key] = list(size)
    return config


def write_generated_dir(target: Target, model: nn.Module, out: Path, card: str) -> Path:
    """Write a generated model's Hub-format folder (``config.json`` from :func:`written_config`,
    ``model.safetensors``, the card) atomically: a temp folder renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        config = written_config(model, target)
        save_model_dir(model, tmp, target.arch.library, config=config)
        GeneratedCard(tmp).write(card)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
