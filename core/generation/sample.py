"""Weight generation: sample new models of a chosen architecture from the backbone's latent space.

    weightatlas sample ATLAS --arch zoo:resnet --n 10 --keep 3
    weightatlas sample ATLAS --arch timm:resnet18 --n 5 --keep 1 --task digits10
    weightatlas sample ATLAS --arch zoo:cnn --evaluate --heldout-task digits-invert
    weightatlas bench sample

Algorithm 3 of paper 003 (§2), with the sampling settings of paper 001 C.2:

1. Layer table of the target: a fresh instance of ``--arch`` (``core.collection.specs.resolve_arch``)
   is tokenized with the atlas' scheme; generated tokens are detokenized into exactly this
   layout, and everything the tokenizer leaves out (batch-norm statistics, integer buffers)
   comes from the fresh instance.
2. Prompt examples: the atlas models with the same layer table and task, best first by
   validation accuracy. With none, ``n_prompts`` fresh instances are trained ``prompt_epochs``
   epochs on the target task (003 §5: 1-5 examples, 1-5 epochs).
3. Prompts are embedded with haloing; a prior over each token position's latent is fitted:
   ``kde`` (Gaussian kernel density per token, bandwidth by Scott's rule with a floor) or
   ``gaussian`` (one diagonal Gaussian per token). The KDE bandwidth defaults to 0.1 x Scott:
   with 1-5 prompts from different epochs or runs, Scott's rule spreads draws across basins
   (on the ci atlas, sampled digits MLPs reached 0.24-0.58 val accuracy at 1 x Scott and
   0.42-0.73 at 0.1 x), and subsampling/bootstrapping widen the search where it pays.
4. Draws: ``independent`` mode draws every token of every sample on its own (its own kernel
   centre and its own noise); ``joint`` mode picks one prompt per sample for all tokens (a KDE
   over whole sequences) with independent noise per coordinate. No mode shares one noise
   vector across tokens. ``auto`` (the default, ``draws.draw_mode``) is ``joint`` for fresh
   prompts (independent random inits: mixing their tokens gives a model of neither) and
   ``independent`` for atlas prompts.
5. Decode with haloing, detokenize, batch-norm conditioning (train-mode forward passes on the
   target's train split under ``torch.no_grad``: only running statistics change), score by
   validation accuracy, keep the best ``keep``. ``bootstrap_rounds`` re-fits the prior on the
   kept samples' latents and draws again; the best ``keep`` over all rounds are written.

Before the prompts are made, ``core.generation.estimate.estimate_sample`` says what the run
will do and about how long it takes (printed, and recorded in the cards next to the measured
time); after the round trip of the prompts, :func:`fidelity_summary` says in plain words how
well the backbone reproduces them.

Each kept model is a Hugging Face-format directory under ``ATLAS/generated/`` (config,
``model.safetensors``, a card with provenance: ``core.generation.card``), loadable by
``core.models.io.load_model_dir``. The round trip and the chance baseline live in
``core.generation.roundtrip``.
``evaluate_generation`` compares sampled models with random init of the same architecture under
the same fine-tuning budget and seeds (``ATLAS/results/generation.json`` / ``.md``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from core.atlas import Atlas, EmbeddingTables, GeneratedCard, write_json
from core.collection.specs import spec_label
from core.config import build_config, to_dict
from core.embeddings.distances import atlas_distance, model_architecture
from core.embeddings.encode import (
    EMBED_PRESETS,
    EmbedConfig,
    backbone_fingerprint,
    embeddings_dir,
    open_backbone,
)
from core.embeddings.table import embed_model_dir_full, token_scheme
from core.errors import WeightAtlasError
from core.generation.build import (
    backbone_precision,
    build_generated,
    condition_batchnorm,
    decode_latents,
    encode_models,
    score,
)
from core.generation.card import card_text, input_size, write_generated_dir
from core.generation.config import DEFAULT_SAMPLE_PRESET, SAMPLE_PRESETS, Progress, SampleConfig
from core.generation.draws import Draw, draw_latents, draw_mode
from core.generation.estimate import estimate_sample
from core.generation.prompts import (
    Target,
    _common_size,
    atlas_prompts,
    fresh_prompts,
    layout_of,
    metric_of,
    model_tokens,
    prompt_recipe,
    resolve_target,
    run_side,
)
from core.generation.roundtrip import (
    chance_baseline,
    fidelity_summary,
    finite_or_none,
    prompt_reference,
    round_trip,
)
from core.safety import printable
from core.tokens.store import TokenStore

# Shapes: E prompts, K draws, N tokens of the target, D token size, L latent dim.


def generate(
    backbone: Any,
    target: Target,
    prompt_tokens: list[torch.Tensor],
    cfg: SampleConfig,
    progress: Progress | None = None,
    progress_span: tuple[float, float] = (0.1, 0.95),
    z: torch.Tensor | None = None,
) -> tuple[list[Draw], list[float], dict[str, float]]:
    """Embed prompts, draw, decode, condition, score; keep the best ``cfg.keep`` (all rounds).

    ``z``: the prompts' latents ``(E, N, L)`` if already encoded (see :func:`round_trip`).

    Returns:
        ``(kept candidates best first, every draw's score, seconds per phase)``.
    """
    lo, hi = progress_span
    secs = {"embed": 0.0, "draw": 0.0, "decode": 0.0, "build": 0.0, "condition": 0.0, "score": 0.0}
    t0 = time.perf_counter()
    if z is None:
        z = encode_models(backbone, prompt_tokens, target, cfg)  # (E, N, L)
    secs["embed"] += time.perf_counter() - t0
    g = torch.Generator().manual_seed(cfg.seed)
    pool: list[Draw] = []
    scores: list[float] = []
    rounds = 1 + cfg.bootstrap_rounds
    total = rounds * cfg.n
    done = 0
    for r in range(rounds):
        t0 = time.perf_counter()
        draws, _ = draw_latents(
            z,
            cfg.n,
            g,
            mode=draw_mode(cfg, "atlas"),  # sample() resolves auto by the prompts' source
            prior=cfg.prior,
            bandwidth_scale=cfg.bandwidth_scale,
            bandwidth_floor=cfg.bandwidth_floor,
        )
        secs["draw"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = decode_latents(backbone, draws, target, cfg)  # (K, N, D)
        secs["decode"] += time.perf_counter() - t0
        round_pool = []
        for i in range(cfg.n):
            t0 = time.perf_counter()
            model = build_generated(tokens[i], target, seed=cfg.seed)
            secs["build"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            condition_batchnorm(model, target, cfg.bn_batches, cfg.bn_batch_size, seed=cfg.seed + i)
            secs["condition"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            val = score(model, target, cfg.score_split)
            secs["score"] += time.perf_counter() - t0
            scores.append(val)
            round_pool.append(Draw(draws[i], model, val, r, i))
            done += 1
            if progress is not None:
                progress(
                    lo + (hi - lo) * done / total,
                    f"round {r + 1}/{rounds}: draw {i + 1}/{cfg.n} "
                    + (f"val {val:.3f}" if math.isfinite(val) else "unscored"),
                )
        round_pool.sort(key=_rank)
        pool = sorted(pool + round_pool, key=_rank)[: cfg.keep]
        if r + 1 < rounds:
            z = torch.stack(
                [c.z for c in round_pool[: max(cfg.keep, 1)]]
            )  # bootstrap: best of round
    return pool, scores, secs


def _rank(c: Draw) -> tuple[float, int, int]:
    """Best validation score first; unscored (NaN) draws keep their draw order."""
    return (-c.val if math.isfinite(c.val) else math.inf, c.round, c.draw)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): a run's whole
    time, imports included, as the Generate page's job takes it."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


def generated_atlas_distance(
    a: Atlas, path: Path, backbone: Any, backbone_dir: str | Path | None, cfg: SampleConfig
) -> dict[str, Any]:
    """Card fields placing a written model against the atlas: embedded as ``weightatlas embed
    --model`` embeds a folder, then ``core.embeddings.distances.atlas_distance`` (with its architecture).

    Returns:
        ``{atlas_distance, atlas_percentile, outside_atlas, atlas_distance_meaning,
        architecture_in_atlas, architecture_note, ...}``; ``{}`` when the atlas has no
        embeddings for this backbone (``weightatlas embed`` not run).
    """

    if not EmbeddingTables(embeddings_dir(a, backbone_dir)).tensors_path.exists():
        return {}
    ecfg = build_config(EmbedConfig, EMBED_PRESETS, "ci", overrides={"device": cfg.device})
    v = embed_model_dir_full(
        path, a.root, cfg=ecfg, check=False, backbone=backbone, backbone_dir=backbone_dir
    )["z"]
    ad = atlas_distance(a.root, v.numpy(), backbone_dir, architecture=model_architecture(path))
    return {
        "atlas_distance": ad["distance"],
        "atlas_percentile": ad["percentile"],
        "outside_atlas": ad["outside"],
        "atlas_distance_k": ad["k"],
        "atlas_distance_metric": ad["metric"],
        "atlas_distance_meaning": ad["meaning"],
        "architecture": ad["architecture"],
        "architecture_in_atlas": ad["architecture_in_atlas"],
        "architecture_note": ad["architecture_note"],
    }


def progress_file_writer(path: str | Path) -> Callable[..., None]:
    """A progress callback writing ``{fraction, message, done, error, outputs}`` atomically."""
    path = Path(path)

    def write(
        fraction: float,
        message: str,
        done: bool = False,
        error: str | None = None,
        outputs: list[str] | None = None,
    ) -> None:
        write_json(
            path,
            {
                "fraction": float(fraction),
                "message": message,
                "done": done,
                "error": error,
                "outputs": outputs or [],
            },
        )

    return write


def sample(
    atlas: str | Path,
    arch: str,
    preset: str | None = DEFAULT_SAMPLE_PRESET,
    overrides: dict[str, Any] | None = None,
    *,
    prompts: list[str] | None = None,
    progress: Progress | None = None,
    backbone_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    estimate: dict[str, Any] | None = None,
) -> list[Path]:
    """Generate ``keep`` models of architecture ``arch`` and write them under ``ATLAS/generated/``.

    Args:
        atlas: a tokenized atlas with a trained backbone.
        arch: ``zoo:<family>``, ``timm:<name>`` or ``hf:<dir or id>``.
        preset: a ``SAMPLE_PRESETS`` name.
        overrides: ``SampleConfig`` fields: ``n`` (draws per round), ``keep``, ``task`` (default:
            the family's own, else ``digits10``), ``width``/``depth`` (zoo family size; default
            the atlas' most common), ``mode`` (see ``draws.draw_mode``), ``prior``,
            ``bootstrap_rounds``, ``seed``, ...
        prompts: atlas model ids to use as prompt examples (default: best matching models,
            else freshly trained instances).
        progress: ``progress(fraction, message)`` callback.
        backbone_dir: another backbone directory.
        out_dir: where to write (default ``ATLAS/generated``).
        estimate: an ``estimate_sample`` result the caller already showed for this run (the
            Generate page's): reported and recorded instead of timing the machine again.

    Returns:
        The written model directories, best first.
    """

    a = Atlas.open(atlas)
    cfg = build_config(SampleConfig, SAMPLE_PRESETS, preset, overrides=overrides)
    if cfg.keep < 1 or cfg.n < cfg.keep:
        raise WeightAtlasError(f"need 1 <= keep <= n, got keep={cfg.keep}, n={cfg.n}")
    report = progress or (lambda f, m: None)
    target, size = _sample_target(a, arch, cfg, report)
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    backbone = _open_backbone_for(a, bdir, cfg.device, size)
    store = TokenStore(a.tokens_dir)
    t_start = time.perf_counter()
    # the caller's estimate (the Generate page's): one estimate shown on the page and by the run
    est = estimate if estimate is not None else estimate_sample(
        a.root, arch, cfg.task, preset=preset, overrides=to_dict(cfg), backbone_dir=backbone_dir,
        target=target, backbone=backbone, prompts=prompts, in_run=True,
    )  # fmt: skip
    tqdm.write(printable(f"estimate: {est['text']}"), file=sys.stderr)
    report(0.0, f"expected about {est['seconds']['total']:.0f} s")
    chosen = _sample_prompts(a, store, arch, target, prompts, cfg, report)
    cfg = dataclasses.replace(cfg, mode=draw_mode(cfg, chosen.source))
    report(0.1, f"{len(chosen.ids)} {chosen.source} prompt(s); drawing {cfg.n} ({cfg.mode})")
    z, fidelity, baseline = _round_trip_scored(backbone, target, chosen, cfg)
    kept, scores, secs = generate(backbone, target, chosen.tokens, cfg, report, z=z)
    at_chance = _chance_check(target, kept, baseline, chosen.scores)
    root = Path(out_dir) if out_dir is not None else a.generated_dir
    base = f"{_slug(spec_label(arch))}--{_slug(target.task or 'unscored')}--seed{cfg.seed}"
    head = {"backbone": backbone_fingerprint(bdir), "backbone_dir": str(bdir)}
    head.update(_prompt_info(chosen, cfg, scores))
    timing = {"seconds": {k: round(v, 3) for k, v in secs.items()}}
    timing.update(estimated_seconds=est["seconds"], n_tokens=est["n_tokens"])
    outputs = []
    for rank, cand in enumerate(kept):
        name = f"{base}--{rank:02d}"
        info = _kept_info(name, cand, target, head, timing, baseline, at_chance[rank], fidelity)
        path = write_generated_dir(
            target, cand.model, root / name, card_text(target, cand, rank, info)
        )
        with backbone_precision(cfg, backbone) as bb:
            placed = generated_atlas_distance(a, path, bb, backbone_dir, cfg)
        if placed:  # issue 16: how far the generated model is from the collected ones
            info.update(placed)
            GeneratedCard(path).write(card_text(target, cand, rank, info))
        outputs.append(path)
    seconds = _report_time(t_start, est)
    report(1.0, f"wrote {len(outputs)} model(s) in {seconds:.1f} s")
    return outputs


@dataclass
class _Prompts:
    """The prompts a run encodes: ids, where they came from, tokens and scores.

    ``scores`` is what a perfect backbone would reach (each prompt rebuilt from its tokens,
    batch norm re-estimated; ``prompt_reference``) where the target has a task, else the
    scores as trained (``as_trained``).
    """

    ids: list[str]
    source: str
    tokens: list[torch.Tensor]
    as_trained: list[float | None]
    scores: list[float | None]


def _open_backbone_for(a: Atlas, bdir: Path, device: str, size: int) -> Any:
    """The backbone in ``bdir``, refused in one line when its token size is not ``size``."""
    backbone = open_backbone(a, bdir, device)
    if backbone.cfg.token_size != size:
        raise WeightAtlasError(
            f"backbone token size {backbone.cfg.token_size} != token store's {size}"
        )
    return backbone


def _round_trip_scored(
    backbone: Any, target: Target, chosen: _Prompts, cfg: SampleConfig
) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any] | None]:
    """Encode and decode the prompts (``round_trip``), summarised against the chance baseline
    (printed); returns the codes, the fidelity fields and the baseline."""
    t0 = time.perf_counter()
    z, fidelity = round_trip(backbone, target, chosen.tokens, cfg)
    baseline = chance_baseline(target, cfg)
    summary = fidelity_summary(target, fidelity, chosen.scores, baseline, chosen.source)
    fidelity.update({k: v for k, v in summary.items() if k != "text"})
    tqdm.write(printable(summary["text"], newlines=True), file=sys.stderr)
    fidelity["round_trip_seconds"] = round(time.perf_counter() - t0, 3)
    return z, fidelity, baseline


def _sample_target(a: Atlas, arch: str, cfg: SampleConfig, report: Progress) -> tuple[Target, int]:
    """The target of ``arch`` on the atlas' token scheme, and the token size.

    Without a width or depth, the atlas' most common size for ``arch`` is taken; a target
    without a task is noted (it is generated unscored).
    """
    report(0.0, f"resolving {arch}")
    scheme, size = token_scheme(a)
    width, depth = cfg.width, cfg.depth
    if width is None and depth is None:
        width, depth = _common_size(a, arch, cfg.task)
    target = resolve_target(arch, scheme, size, task=cfg.task, width=width, depth=depth)
    if target.note:
        tqdm.write(printable(f"note: {target.note}"), file=sys.stderr)  # above any progress bar
        report(0.0, "no task: generating unscored")
    return target, size


def _sample_prompts(
    a: Atlas,
    store: TokenStore,
    arch: str,
    target: Target,
    prompts: list[str] | None,
    cfg: SampleConfig,
    report: Progress,
) -> _Prompts:
    """The given prompts (checked: in the store, the target's layer table), else the atlas'
    best matching models, else freshly trained instances of the target."""
    if prompts:
        unknown = [p for p in prompts if p not in store]
        if unknown:
            raise WeightAtlasError(f"prompt {unknown[0]!r} is not in the token store")
        bad = [p for p in prompts if layout_of(store.layers(p)) != target.layout]
        if bad:
            raise WeightAtlasError(
                f"prompt {bad[0]!r} does not have the layer table of {arch} for {target.task}"
            )
        ids, source = list(prompts), "atlas"
    else:
        ids, source = atlas_prompts(a, target, cfg.max_prompts), "atlas"
    if ids:
        tokens = [_store_tokens(store, p) for p in ids]
        manifest = {r["id"]: r for r in a.manifest()}
        as_trained = [metric_of(manifest.get(p, {})) for p in ids]
    else:
        source = "fresh"
        models = fresh_prompts(target, cfg, report)
        tokens = [model_tokens(m, target) for m in models]
        as_trained = [finite_or_none(score(m, target, cfg.score_split)) for m in models]
        ids = [
            f"fresh:{arch}:seed{cfg.seed * 1000 + 500 + i}:"
            f"{prompt_recipe(target, cfg)[0] if target.task is not None else 0}ep"
            for i in range(len(models))
        ]
    scores = as_trained
    if target.task is not None:  # the reference a perfect backbone would reach
        scores = prompt_reference(tokens, target, cfg)
    return _Prompts(ids, source, tokens, as_trained, scores)


def _chance_check(
    target: Target,
    kept: list[Any],
    baseline: dict[str, Any] | None,
    prompt_scores: list[float | None],
) -> list[bool]:
    """Whether each kept model is at chance level; a warning when every one is."""
    at_chance = [baseline is not None and c.val <= baseline["chance_threshold"] for c in kept]
    if baseline is not None and kept and all(at_chance):
        prompt_text = ", ".join(f"{v:.3f}" for v in prompt_scores if v is not None) or "n/a"
        tqdm.write(
            f"warning: every kept model is at chance level on {target.task} "
            f"(best val {kept[0].val:.3f}; chance {baseline['chance_accuracy']:.3f}, "
            f"random init {baseline['random_init_val_accuracy']:.3f}, prompts {prompt_text}): "
            "the backbone does not generate this architecture usefully here",
            file=sys.stderr,
        )
    return at_chance


def _prompt_info(chosen: _Prompts, cfg: SampleConfig, scores: list[float]) -> dict[str, Any]:
    """The card fields every kept model of a run shares: its prompts and how it drew."""
    return {
        "prompts": chosen.ids,
        "prompt_source": chosen.source,
        "prompt_scores": chosen.scores,  # rebuilt from their tokens, BN as for the draws
        "prompt_scores_as_trained": [finite_or_none(v) for v in chosen.as_trained],
        "seed": cfg.seed,
        "mode": cfg.mode,  # resolved by draw_mode
        "prior": cfg.prior,
        "n": cfg.n,
        "keep": cfg.keep,
        "bootstrap_rounds": cfg.bootstrap_rounds,
        "draw_val_accuracies": [finite_or_none(v) for v in scores],
    }


def _kept_info(
    name: str,
    cand: Draw,
    target: Target,
    head: dict[str, Any],
    timing: dict[str, Any],
    baseline: dict[str, Any] | None,
    at_chance: bool,
    fidelity: dict[str, Any],
) -> dict[str, Any]:
    """A kept model's card fields: the run's (``head``, ``timing``, the chance baseline, the
    round trip's fidelity) around the model's own (input side and size, test accuracy)."""
    info = {"name": name, **head}
    info["input_side"] = run_side(cand.model, target)  # None: the task's own inputs
    info["input_size"] = input_size(cand.model, target)  # what BN statistics were estimated on
    info.update(timing)
    info["test_accuracy"] = score(cand.model, target, "test")
    info.update(baseline or {})
    info["at_chance"] = at_chance if baseline is not None else None
    info.update({k: v for k, v in fidelity.items() if k != "round_trip_layer_r2"})
    return info


def _report_time(t_start: float, est: dict[str, Any]) -> float:
    """Write the run's time (and the process's, and the estimate) to stderr; return seconds."""
    seconds = time.perf_counter() - t_start
    process = process_seconds()
    tqdm.write(
        f"time: {seconds:.1f} s"
        + (f" ({process:.1f} s since the process started)" if process is not None else "")
        + f"; estimated {est['seconds']['total']:.0f} s before the run",
        file=sys.stderr,
    )
    return seconds


def _store_tokens(store: Any, model_id: str) -> torch.Tensor:
    tok = store.get(model_id)
    return tok.tokens.masked_fill(~tok.mask, 0.0)
