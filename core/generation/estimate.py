"""What a ``sample`` run will do and about how long it will take, before it starts (issue 17).

    from core.generation.estimate import estimate_sample
    est = estimate_sample("runs/demo/atlas", "timm:resnet18")
    print(est["text"])      # one paragraph for the CLI and the Generate page

The estimate is measured, not tabulated: it resolves the target (as ``sample`` does), times a
few backbone windows (encode and decode, in the precision ``sample`` uses) and a forward
pass of the target on a batch of the task's inputs, and scales them by the work the run will
do (tokens x backbone passes, prompt-training examples, scoring examples). The probes take
about a second and run under the machine's current load, so a busy machine gives a longer
estimate. ``sample`` records the estimate next to the measured time in every card.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import Atlas, EmbeddingTables
from core.config import build_config
from core.embeddings.encode import embeddings_dir, open_backbone, resolve_window
from core.embeddings.table import token_scheme
from core.generation.build import backbone_precision, embed_config
from core.generation.config import DEFAULT_SAMPLE_PRESET, SAMPLE_PRESETS, SampleConfig
from core.generation.prompts import (
    _common_size,
    atlas_prompts,
    prompt_recipe,
    resolve_target,
    runnable,
)
from core.models.optim import adamw
from core.models.registry import logits
from core.tokens.store import read_index
from core.zoos.tasks import get_task

# a training step (forward + backward + AdamW) costs about this many forward passes
TRAIN_COST = 3.0


def _timed(fn: Any, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after one warm-up call.

    The median, not the best: on a shared machine the run will see the typical load; and not
    the mean, which one preempted call can double (the same ResNet-18 run was estimated at 40
    and at 66 s with the mean of two calls; it took 42-45 s).
    """
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def backbone_seconds_per_token(backbone: Any, cfg: Any, windows: int = 16) -> dict[str, float]:
    """Measured seconds per *content* token of one haloed encode and one decode pass.

    Times ``windows`` full windows through ``backbone.encode`` and ``backbone.decode`` in the
    precision of :func:`core.generation.build.backbone_precision` and divides by the content tokens
    (window minus both halos), so the halo overhead is included.
    """
    window, halo = resolve_window(embed_config(cfg), backbone)
    d = int(backbone.cfg.token_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(windows, window, d, generator=g)
    pos = torch.zeros(windows, window, 3, dtype=torch.long)
    pos[..., 2] = torch.arange(window)
    content = windows * (window - 2 * halo)
    with torch.no_grad(), backbone_precision(cfg, backbone) as bb:
        z = bb.encode(x, pos)
        enc = _timed(lambda: bb.encode(x, pos))
        dec = _timed(lambda: bb.decode(z, pos))
    return {"encode": enc / content, "decode": dec / content}


def model_seconds_per_example(model: torch.nn.Module, target: Any, batch: int = 64) -> float:
    """Measured seconds of one eval forward pass per task example, at the side it runs at."""
    X, _ = get_task(str(target.task)).split("train")
    xb = X[:batch]
    net = runnable(model, target)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            seconds = _timed(lambda: logits(net, xb))
    finally:
        model.train(was)
    return seconds / len(xb)


def estimate_sample(
    atlas: str | Path,
    arch: str,
    task: str | None = None,
    *,
    preset: str | None = DEFAULT_SAMPLE_PRESET,
    overrides: dict[str, Any] | None = None,
    width: int | None = None,
    depth: int | None = None,
    backbone_dir: str | Path | None = None,
    target: Any = None,
    backbone: Any = None,
    prompts: list[str] | None = None,
    in_run: bool = False,
    startup_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What ``sample(atlas, arch, preset, overrides)`` will do (``task``, ``width``, ``depth``:
    as the ``SampleConfig`` fields of that name; given here they take precedence).

    Args:
        atlas: a tokenized atlas with a trained backbone.
        arch, task, preset, overrides, width, depth, backbone_dir: as for ``sample``.
        target, backbone: already resolved/loaded ones (``sample`` passes its own).
        prompts: explicit atlas prompt ids (as ``sample``'s ``prompts``).
        in_run: made inside the run (``sample``): the probes' own seconds are part of the
            run's time and counted (on a small target they are most of it: 5-18 s of probes
            against 0.02 s of backbone work for the demo's MLP).
        startup_seconds: what a fresh process pays before the run's work (the Generate
            page's job; ``explorer.jobs.startup_seconds`` measures it): ``import``, ``task``
            and ``process`` always, ``optimizer`` (the first AdamW imports torch's compiler stack)
            when fresh prompts are trained. In a run (``in_run``) the first AdamW is built
            inside the probes instead, so its cost is counted there.

    Returns:
        ``{"arch", "task", "scored", "note", "n_tokens", "n_params", "architecture_in_atlas",
        "atlas_prompts", "prompt_source", "passes": {"encode", "decode", "place"},
        "seconds": {"prompts", "backbone", "scoring", "total"}, "rates": {...}, "text"}``.
        ``architecture_in_atlas``: the atlas has models with this exact layer table (they are
        the prompts); otherwise fresh prompts are trained and the text says so.

    Raises:
        TargetError / WeightAtlasError: as ``sample`` would, before any work.
    """
    t_start = time.perf_counter()
    a = Atlas.open(atlas)
    cfg = build_config(SampleConfig, SAMPLE_PRESETS, preset, overrides=overrides)
    if target is None:
        target = _estimate_target(a, arch, cfg, task, width, depth)
    if backbone is None:  # ATLAS/backbone without a backbone_dir
        backbone = open_backbone(a, backbone_dir, cfg.device)
    n_tokens = int(len(target.positions))
    model = target.fresh(cfg.seed)
    n_params = int(sum(p.numel() for p in model.parameters()))
    found = list(prompts) if prompts else atlas_prompts(a, target, cfg.max_prompts)
    e = len(found) if found else cfg.n_prompts
    tables = EmbeddingTables(embeddings_dir(a, backbone_dir))
    passes = _passes(e, cfg, tables.tensors_path.exists())
    atlas_max = _atlas_max_tokens(a)
    rate = backbone_seconds_per_token(backbone, cfg)
    place_s = _timed_read(tables.tensors_path) if passes["place"] else 0.0
    backbone_s = _backbone_seconds(n_tokens, passes, rate)
    prompts_s, scoring_s, per_example = _model_seconds(model, target, cfg, bool(found), e)
    trains = not found and target.task is not None and prompt_recipe(target, cfg)[0] > 0
    if in_run and trains:  # the first AdamW (torch's compiler stack: seconds) paid here
        adamw([torch.nn.Parameter(torch.zeros(1))], 1e-3)
    startup_s = _startup(startup_seconds or {}, trains)
    probe_s = time.perf_counter() - t_start if in_run else 0.0
    total = startup_s + probe_s + prompts_s + backbone_s + scoring_s + place_s
    seconds = {"startup": startup_s, "probe": probe_s, "prompts": prompts_s}
    seconds.update(backbone=backbone_s, scoring=scoring_s, placing=place_s, total=total)
    seconds = {k: round(v, 3) for k, v in seconds.items()}
    out: dict[str, Any] = {"arch": arch, "task": target.task, "scored": target.task is not None}
    out.update(note=target.note, n_tokens=n_tokens, n_params=n_params)
    out.update(architecture_in_atlas=bool(found), atlas_prompts=len(found))
    out.update(prompt_source="atlas" if found else "fresh")
    out.update(prompt_epochs=prompt_recipe(target, cfg)[0], atlas_max_tokens=atlas_max)
    out.update(passes=passes, seconds=seconds, rates=_rates(rate, per_example))
    out["probe_seconds"] = round(time.perf_counter() - t_start, 2)
    out["text"] = estimate_text(out, cfg)
    return out


def _estimate_target(
    a: Atlas,
    arch: str,
    cfg: SampleConfig,
    task: str | None,
    width: int | None,
    depth: int | None,
) -> Any:
    """The target ``sample`` would resolve: ``task``/``width``/``depth`` given here take
    precedence over ``cfg``'s; without a size, the atlas' most common one."""
    task = task if task is not None else cfg.task
    width = width if width is not None else cfg.width
    depth = depth if depth is not None else cfg.depth
    scheme, size = token_scheme(a)
    if width is None and depth is None:
        width, depth = _common_size(a, arch, task)
    return resolve_target(arch, scheme, size, task=task, width=width, depth=depth)


def _passes(e: int, cfg: SampleConfig, placed: bool) -> dict[str, int]:
    """Backbone passes of a run with ``e`` prompts (``placed``: the atlas has embeddings)."""
    rounds = 1 + cfg.bootstrap_rounds
    return {
        "encode": e,  # the prompts (their latents are reused for the draws)
        "decode": e + rounds * cfg.n,  # the round trip of the prompts, then every draw
        "place": cfg.keep if placed else 0,  # each written model embedded for its atlas distance
    }


def _atlas_max_tokens(a: Atlas) -> int:
    """The most tokens of one model in the atlas' token store (0 if none)."""
    models = read_index(a.tokens_dir)["models"].values()
    return max((int(m["n_tokens"]) for m in models), default=0)


def _backbone_seconds(n_tokens: int, passes: dict[str, int], rate: dict[str, float]) -> float:
    """Backbone seconds of the run's passes over a target of ``n_tokens`` tokens."""
    encodes = passes["encode"] + passes["place"]
    return n_tokens * (encodes * rate["encode"] + passes["decode"] * rate["decode"])


def _timed_read(path: Path) -> float:
    """Seconds to read ``path`` once (the atlas distance reads the embedding tables once)."""
    t0 = time.perf_counter()
    path.read_bytes()
    return time.perf_counter() - t0


def _model_seconds(
    model: torch.nn.Module, target: Any, cfg: SampleConfig, found: bool, e: int
) -> tuple[float, float, float | None]:
    """Seconds the target's own model work takes: training fresh prompts (none when the atlas
    has ``found`` prompts) and scoring; 0 without a task.

    Returns:
        (prompts seconds, scoring seconds, the model's seconds per example or None).
    """
    if target.task is None:
        return 0.0, 0.0, None
    per_example = model_seconds_per_example(model, target)
    t = get_task(target.task)
    n_train = len(t.split("train")[1])
    n_score = len(t.split(cfg.score_split)[1])
    n_test = len(t.split("test")[1])
    epochs = prompt_recipe(target, cfg)[0]
    prompts_s = 0.0
    if not found:
        prompts_s = cfg.n_prompts * (epochs * n_train * TRAIN_COST + n_score) * per_example
    bn = cfg.bn_batches * cfg.bn_batch_size
    rounds = 1 + cfg.bootstrap_rounds
    # every draw, the prompts (rebuilt from their tokens and after their round trip) and the
    # random-init baseline are conditioned and scored on the score split; the kept models
    # are also scored on the test split
    scoring_s = ((rounds * cfg.n + 2 * e + 1) * (bn + n_score) + cfg.keep * n_test) * per_example
    return prompts_s, scoring_s, per_example


def _startup(start: dict[str, float], trains: bool) -> float:
    """A fresh process's start-up seconds (``estimate_sample``'s ``startup_seconds``)."""
    startup_s = sum(float(start.get(k, 0.0)) for k in ("import", "task", "process"))
    return startup_s + (float(start.get("optimizer", 0.0)) if trains else 0.0)


def _rates(rate: dict[str, float], per_example: float | None) -> dict[str, Any]:
    """The measured rates an estimate reports (backbone tokens/s, model examples/s)."""
    return {
        "backbone_encode_tokens_per_s": 1.0 / rate["encode"],
        "backbone_decode_tokens_per_s": 1.0 / rate["decode"],
        "model_examples_per_s": (1.0 / per_example) if per_example else None,
        "threads": torch.get_num_threads(),
    }


def estimate_text(est: dict[str, Any], cfg: Any) -> str:
    """One plain paragraph: what the atlas holds for this target and the expected time."""
    s, p = est["seconds"], est["passes"]
    if est["architecture_in_atlas"]:
        where = (
            f"The atlas holds this architecture: {est['atlas_prompts']} of its models with the "
            f"same layer table{' on ' + est['task'] if est['task'] else ''} are the prompts."
        )
    else:
        trained = (
            f"trained {est['prompt_epochs']} epoch(s) on {est['task']}"
            if est["scored"]
            else "untrained (no task)"
        )
        where = (
            f"The atlas does not hold this architecture"
            f"{' for ' + est['task'] if est['task'] else ''}: {cfg.n_prompts} fresh prompt(s) "
            f"are {trained}, and the encode-decode fidelity on them is shown before the draws "
            "(the backbone was not trained on this layer table)."
        )
    if est["atlas_max_tokens"] and est["n_tokens"] > est["atlas_max_tokens"]:
        where += (
            f" Note: its {est['n_tokens']:,} tokens are "
            f"{_times(est['n_tokens'] / est['atlas_max_tokens'])} the largest model in the atlas "
            f"({est['atlas_max_tokens']:,}), so the backbone never saw token positions that far: "
            "whether it copes shows in the fidelity line printed before the draws."
        )
    fixed = s.get("startup", 0.0) + s.get("probe", 0.0) + s.get("placing", 0.0)
    return (
        f"{where} Expected time about {_human(s['total'])} on this machine now: start-up and "
        f"timing probes {_human(fixed)}, backbone "
        f"{_human(s['backbone'])} ({p['encode'] + p['place']} encode and {p['decode']} decode "
        f"passes over {est['n_tokens']:,} tokens, {est['n_params'] / 1e6:.1f} M parameters), "
        f"prompt training {_human(s['prompts'])}, conditioning and scoring "
        f"{_human(s['scoring'])}."
    )


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _human(seconds: float) -> str:
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
