"""Evaluation of generated models against prompts, random init and chance (001 C.2 protocol),
and the accuracy of atlas models after an encode-decode through the backbone."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.atlas import Atlas, GeneratedCard
from core.collection.specs import parse_model_spec
from core.config import build_config, to_dict
from core.embeddings.encode import _masked_tokens, open_backbone
from core.embeddings.fidelity import reconstruct_tokens
from core.embeddings.table import token_scheme
from core.errors import WeightAtlasError
from core.generation.build import condition_batchnorm, score
from core.generation.config import GENERATION_PRESETS, GenerationConfig, Progress
from core.generation.prompts import (
    Target,
    _common_size,
    default_task,
    metric_of,
    resolve_target,
    runnable,
)
from core.generation.sample import sample
from core.models.io import load_model_dir, load_weights_strict
from core.tokens.plan import detokenize
from core.tokens.store import TokenStore
from core.zoos.tasks import chance_accuracy, evaluate_accuracy, train_epochs

# ---------------------------------------------------------------------------------------------


# evaluation of generated models


def finetune_curve(
    model: nn.Module, target: Target, epochs: tuple[int, ...], lr: float, seed: int
) -> dict[int, float]:
    """Test accuracy after each cumulative epoch budget in ``epochs`` (0 = zero-shot)."""

    out: dict[int, float] = {}
    done = 0
    net = runnable(model, target)
    for e in sorted(epochs):
        if e > done:
            train_epochs(net, target.task, e - done, lr, seed=seed * 100 + done)
            done = e
        out[e] = score(model, target, "test")
    return out


def heldout_prompts(
    a: Atlas, arch: str, task: str, limit: int
) -> tuple[list[str] | None, tuple[int, int] | None]:
    """Up to ``limit`` validation/test models of a zoo family on ``task`` (best validation
    accuracy first, all of the size most of them share), so that generation is never prompted
    with a model the backbone trained on; ``(None, None)`` when the atlas has none."""
    parsed = parse_model_spec(arch)
    if parsed.kind != "zoo":
        return None, None
    rest = parsed.ref
    cands = []
    for r in a.accepted():
        labels = r.get("labels") or {}
        if (
            r.get("split") in ("val", "test")
            and labels.get("family", r.get("family")) == rest
            and labels.get("task") == task
            and isinstance(labels.get("width"), int)
            and isinstance(labels.get("depth"), int)
        ):
            cands.append(r)
    if not cands:
        return None, None
    sizes = Counter((r["labels"]["width"], r["labels"]["depth"]) for r in cands)
    size = max(sizes, key=lambda k: (sizes[k], -k[0], -k[1]))
    same = [r for r in cands if (r["labels"]["width"], r["labels"]["depth"]) == size]
    same.sort(key=lambda r: (-metric_of(r), r["id"]))
    return [r["id"] for r in same[:limit]], (int(size[0]), int(size[1]))


def evaluate_generation(
    atlas: str | Path,
    arch: str,
    task: str | None = None,
    heldout_task: str | None = None,
    *,
    preset: str | None = "ci",
    sample_preset: str | None = "ci",
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Sampled vs random init, zero-shot and after fine-tuning, in-distribution and held out.

    For each task and seed, ``sample`` draws ``n`` and keeps ``keep`` models; the same number
    of random-init models of the same architecture (init seeds ``seed*100 + i``) are fine-tuned
    with the same epochs, learning rate and shuffling seeds. The held-out task must be absent
    from the atlas' collection, so its prompts are freshly trained instances (003 §5).

    Returns:
        The dict written to ``ATLAS/results/generation.json`` (also ``generation.md``).
    """

    a = Atlas.open(atlas)
    gcfg = build_config(GenerationConfig, GENERATION_PRESETS, preset, overrides=overrides)
    task = task or default_task(arch)
    heldout = heldout_task or gcfg.heldout_task
    collected = {(r.get("labels") or {}).get("task") for r in a.accepted()}
    if heldout in collected:
        raise WeightAtlasError(
            f"held-out task {heldout!r} is in the atlas' collection; pick a task it lacks"
        )
    scheme, size = token_scheme(a)
    report = progress or (lambda f, m: None)
    rows = []
    settings = [("in-distribution", task), ("held-out", heldout)]
    prompt_info: dict[str, Any] = {}
    for si, (setting, task_name) in enumerate(settings):
        # prompts the backbone never trained on: validation/test models (issue 15); held out:
        # the atlas has none, so sample trains fresh ones (003 §5)
        prompt_ids, psize = heldout_prompts(a, arch, task_name, 5)
        for seed in gcfg.seeds:
            gen_dir = a.generated_dir / "evaluation"
            over = {"n": gcfg.n, "keep": gcfg.keep, "seed": seed, "task": task_name}
            if psize:
                over.update(width=psize[0], depth=psize[1])
            paths = sample(a.root, arch, sample_preset, over, out_dir=gen_dir, prompts=prompt_ids)

            width, depth = psize or _common_size(a, arch, task_name)
            target = resolve_target(arch, scheme, size, task=task_name, width=width, depth=depth)
            card = GeneratedCard(paths[0]).block()
            prompt_info.setdefault(setting, _prompt_summary(card, task_name))
            rows += _finetune_rows(paths, target, gcfg, setting, task_name, seed, card)
            report((si + 1) / len(settings), f"{setting}: seed {seed} done")
    table = _aggregate(rows, gcfg.epochs)
    out = {
        "arch": arch,
        "tasks": {"in-distribution": task, "held-out": heldout},
        "prompts": prompt_info,
        "config": to_dict(gcfg),
        "rows": rows,
        "table": table,
    }
    a.write_result("generation", out, generation_markdown(out))
    return out


def _prompt_summary(card: dict[str, Any], task: str) -> dict[str, Any]:
    """What a setting's prompts were, read from its first generated model's card."""
    as_trained = card.get("prompt_scores_as_trained")
    return {
        "task": task,
        "source": card.get("prompt_source"),
        "prompts": card.get("prompts"),
        "prompt_val_accuracy": card.get("prompt_scores"),
        # cards that keep the as-trained scores score prompts as the draws are:
        # rebuilt from their tokens with batch norm re-estimated (like for like)
        "prompt_val_accuracy_as_trained": as_trained,
        "prompt_batchnorm": "re-estimated" if as_trained is not None else "as trained",
        "chance": chance_accuracy(task),
    }


def _finetune_rows(
    paths: list[Path],
    target: Target,
    gcfg: GenerationConfig,
    setting: str,
    task: str,
    seed: int,
    card: dict[str, Any],
) -> list[dict[str, Any]]:
    """Fine-tuning curves of each generated model and of a random init of the same architecture
    (init seed ``seed*100 + i``, the same epochs, learning rate and shuffling seed), in turn."""
    rows = []
    for i, p in enumerate(paths):
        model = load_model_dir(p).model
        curve = finetune_curve(model, target, gcfg.epochs, gcfg.lr, seed=seed * 100 + i)
        common = {"setting": setting, "task": task, "seed": seed}
        rows.append({**common, "init": "sampled", "model": i, "curve": curve})
        rows[-1]["prompt_source"] = card.get("prompt_source")
        rnd = target.arch.build(seed * 100 + i)
        curve = finetune_curve(rnd, target, gcfg.epochs, gcfg.lr, seed=seed * 100 + i)
        rows.append({**common, "init": "random", "model": i, "curve": curve})
    return rows


def _aggregate(rows: list[dict[str, Any]], epochs: tuple[int, ...]) -> list[dict[str, Any]]:
    out = []
    for setting in ("in-distribution", "held-out"):
        for init in ("sampled", "random"):
            sel = [r for r in rows if r["setting"] == setting and r["init"] == init]
            if not sel:
                continue
            entry: dict[str, Any] = {
                "setting": setting,
                "task": sel[0]["task"],
                "init": init,
                "n_models": len(sel),
            }
            for e in sorted(epochs):
                vals = np.array([r["curve"][e] for r in sel])
                entry[f"epoch{e}_mean"] = float(vals.mean())
                entry[f"epoch{e}_std"] = float(vals.std())
            out.append(entry)
    return out


def generation_markdown(out: dict[str, Any]) -> str:
    """The generation table: test accuracy (mean ± std) per epoch budget."""
    epochs = sorted(int(e) for e in out["config"]["epochs"])
    head = "| setting | task | init | models | " + " | ".join(f"epoch {e}" for e in epochs) + " |"
    prompts = out.get("prompts") or {}
    notes = []
    for setting, p in prompts.items():
        accs = ", ".join(f"{v:.3f}" for v in (p.get("prompt_val_accuracy") or []) if v is not None)
        notes.append(
            f"{setting} (`{p['task']}`): {len(p.get('prompts') or [])} {p.get('source')} prompt(s)"
            + (" (validation/test models only)" if p.get("source") == "atlas" else "")
            + (f", validation accuracy {accs}" if accs else "")
            + f"; chance {p['chance']:.3f}."
        )
    lines = [
        f"Architecture `{out['arch']}`; test accuracy (mean ± std over kept models and seeds) after "
        f"fine-tuning with AdamW lr {out['config']['lr']}; random init uses the same budget and seeds. "
        "Chance: the most frequent test class. Prompts: " + " ".join(notes),
        "",
        head + " chance |",
        "|" + "---|" * (5 + len(epochs)),
    ]
    for e in out["table"]:
        cells = " | ".join(f"{e[f'epoch{x}_mean']:.3f} ± {e[f'epoch{x}_std']:.3f}" for x in epochs)
        chance = (prompts.get(e["setting"]) or {}).get("chance")
        ch = "n/a" if chance is None else f"{chance:.3f}"
        lines.append(
            f"| {e['setting']} | {e['task']} | {e['init']} | {e['n_models']} | {cells} | {ch} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# encode-decode accuracy of atlas models


def reconstruction_accuracy(
    atlas: str | Path,
    family: str = "cnn",
    task: str = "digits10",
    splits: tuple[str, ...] = ("val", "test"),
    backbone_dir: str | Path | None = None,
    eval_split: str = "test",
) -> list[dict[str, Any]]:
    """Accuracy of models before and after an encode-decode through the backbone.

    Each accepted model of ``family`` trained on ``task`` in one of ``splits`` (by default
    only models the backbone never trained on) is loaded from its directory, its stored tokens
    are encoded and decoded (haloed windows, as the embed stage does), and the decoded tensors
    replace its trainable weights; buffers (batch-norm running statistics) stay the original's.
    Both models are scored on ``eval_split`` of the task, and the decoded one once more after
    re-estimating its batch-norm statistics on train data (as sampling does,
    ``core.generation.build.condition_batchnorm``).

    Returns:
        One row per model: ``id, split, epoch, accuracy_original, accuracy_decoded,
        accuracy_decoded_bn, r2`` (R² of all decoded values).
    """

    a = Atlas.open(atlas)
    store = TokenStore(a.tokens_dir)
    backbone = open_backbone(a, backbone_dir, "cpu")
    rows = [
        r
        for r in a.accepted()
        if r.get("split") in splits
        and (r.get("labels") or {}).get("family", r.get("family")) == family
        and (r.get("labels") or {}).get("task") == task
        and r["id"] in store
        and r.get("path")
    ]
    if not rows:
        raise WeightAtlasError(
            f"{a.root}: no accepted {family}/{task} model in splits {', '.join(splits)}"
        )
    out = []
    for r in tqdm(sorted(rows, key=lambda r: r["id"]), desc="encode-decode", unit="model"):
        path = Path(r["path"])
        model = load_model_dir(path if path.is_absolute() else a.root / path).model.float()
        tok = store.get(r["id"])
        tokens, positions = _masked_tokens(tok)
        recon = reconstruct_tokens(backbone, tokens, positions)
        decoded = copy.deepcopy(model)
        state = dict(decoded.state_dict())
        state.update(detokenize(recon, store.layers(r["id"])))
        load_weights_strict(decoded, state)
        decoded.eval()
        mask = torch.as_tensor(tok.mask, dtype=torch.bool)
        y, p = tokens[mask].double(), recon[mask].double()
        labels = r.get("labels") or {}
        row = {
            "id": r["id"],
            "split": r["split"],
            "epoch": labels.get("epoch"),
            "accuracy_original": evaluate_accuracy(model, task, eval_split),
            "accuracy_decoded": evaluate_accuracy(decoded, task, eval_split),
            "r2": float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        }
        target = resolve_target(
            f"zoo:{family}", store.scheme, store.token_size, task,
            labels.get("width"), labels.get("depth"),
        )  # fmt: skip
        if condition_batchnorm(decoded, target, batches=8, batch_size=64, seed=0):
            row["accuracy_decoded_bn"] = evaluate_accuracy(decoded, task, eval_split)
        out.append(row)
    return out
