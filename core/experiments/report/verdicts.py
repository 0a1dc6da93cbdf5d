"""Verdicts of the stage sections: probes (003 Table 9), map quality, permutation
invariance, generation against random init and against its own prompts.
"""

from __future__ import annotations

import statistics
from typing import Any

from core.experiments.report.rules import (
    NOT_TESTABLE,
    PROBE_MIN_R2,
    TABLE5_EPOCH,
    compare,
    verdict_line,
)
from core.experiments.report.tables import fmt
from core.zoos.tasks import chance_accuracy


def probe_verdict(
    target: str,
    emb: dict[str, Any],
    sw: dict[str, Any],
    step: int | None,
    noise: dict[str, Any] | None = None,
    min_r2: float = PROBE_MIN_R2,
) -> tuple[str, str]:
    """One probe verdict on 003 Table 9's parity claim: the embedding predicts ``target``
    about as well as s(W) inside one zoo.

    Args:
        target: ``test_accuracy``, ``epoch`` or ``generalization_gap``.
        emb, sw: the two probes' results (``cv_mean``, ``cv_std``, ``cv_baseline_mean``,
            ``cv_baseline_std``: grouped K-fold R² and the mean predictor's).
        step: the kept backbone step (``probes.json`` ``backbone_step``); 0 is the initial,
            untrained code, which is not SANE, and None says nothing: both are not testable.
        noise: the zoo's ``target_noise``; a generalization gap whose spread is at most the
            test accuracy's standard error is noise at this test size: not testable.
        min_r2: parity agrees only where both R² reach it; two weak probes are inconclusive.

    Returns:
        ``(outcome, reason)``.
    """
    em, es = emb["cv_mean"], emb["cv_std"]
    wm, ws = sw["cv_mean"], sw["cv_std"]
    base, bsd = emb.get("cv_baseline_mean") or 0.0, emb.get("cv_baseline_std") or 0.0
    untestable = []
    if step is None:
        untestable.append("the probes do not record which backbone step made the embedding")
    elif step == 0:
        untestable.append(
            "the kept backbone is step 0, an untrained code: this tests no learned "
            "representation, so it says nothing about SANE"
        )
    if target == "generalization_gap" and noise:
        se, sd = noise.get("test_accuracy_se"), noise.get("generalization_gap_std")
        if se is not None and sd is not None and sd <= se:
            untestable.append(
                f"the gap's spread over models ({sd:.4f}) is at most the test accuracy's "
                f"standard error ({se:.4f} on {noise.get('n_test_examples')} test examples): "
                "the target is noise at this test size"
            )
    if untestable:
        return NOT_TESTABLE, "; ".join(untestable)
    trained = f"backbone trained, kept step {step}"
    if em - base <= es + bsd and wm - base <= ws + bsd:
        return (
            "inconclusive",
            f"both within the spread of the mean predictor ({base:.3f}); {trained}",
        )
    if em - base <= es + bsd:
        return "disagree", f"the embedding has no signal (mean predictor {base:.3f}); {trained}"
    if abs(em - wm) <= es + ws:
        if min(em, wm) < min_r2:
            return "inconclusive", (
                f"spreads overlap but the probes are weak (R² below {min_r2}; 003 has both "
                f"near 0.95 on MNIST); {trained}"
            )
        return "agree", f"comparable: spreads overlap, both R² >= {min_r2}; {trained}"
    if em > wm:
        return "agree", f"the embedding is ahead of s(W); {trained}"
    return "disagree", (
        f"s(W) is ahead beyond the spreads (003: s(W) ahead on its CIFAR-10 and STL zoos, at "
        f"parity on MNIST and SVHN); {trained}"
    )


def probe_verdicts(out: dict[str, Any]) -> list[str]:
    """003 Table 9: embeddings predict test accuracy, epoch and generalization gap about as well
    as s(W) inside one zoo. Per zoo and target: embedding vs s(W) (grouped K-fold mean ± std),
    by the rules of ``probe_verdict``; each line names the backbone step it tested, and the gap
    line the test accuracy's standard error beside the gap's spread."""
    lines = []
    step = out.get("backbone_step")
    for key, z in (out.get("zoos") or {}).items():
        noise = z.get("noise") or {}
        for target in ("test_accuracy", "epoch", "generalization_gap"):
            e = z["results"].get("embedding", {}).get(target, {})
            w = z["results"].get("s(W)", {}).get(target, {})
            if e.get("cv_mean") is None or w.get("cv_mean") is None:
                continue
            em, es, wm, ws = e["cv_mean"], e["cv_std"], w["cv_mean"], w["cv_std"]
            effect = (
                f"embedding {em:.3f} ± {es:.3f} vs s(W) {wm:.3f} ± {ws:.3f} (effect {em - wm:+.3f})"
            )
            both = z["results"].get("embedding+s(W)", {}).get(target, {})
            if both.get("cv_mean") is not None:
                effect += f"; embedding+s(W) {both['cv_mean']:.3f} ± {both['cv_std']:.3f}"
            if target == "generalization_gap" and noise.get("test_accuracy_se") is not None:
                effect += (
                    f"; gap std {fmt(noise.get('generalization_gap_std'), 4)} vs test-accuracy "
                    f"SE {noise['test_accuracy_se']:.4f} ({noise.get('n_test_examples')} test "
                    "examples)"
                )
            outcome, why = probe_verdict(target, e, w, step, noise)
            lines.append(verdict_line(outcome, f"{key}, {target}", f"{effect}; {why}"))
    return lines


MAP_QUALITY_MARGIN = 0.05  # issue 25: the embedding no worse than s(W) by more than this


def map_quality_verdicts(out: dict[str, Any]) -> list[str]:
    """The map's purpose (DESIGN, issue 25): nearby models share family, task and quality, no
    worse than the weights' plain statistics s(W). Per figure and space (embedding, UMAP, PCA):
    **agree** when it is within ``MAP_QUALITY_MARGIN`` of s(W) or ahead, and above the
    feature-free reference (majority / mean predictor); **disagree** otherwise. Single numbers
    (one leave-one-run-out pass, no spread), so the margin is the only tolerance."""
    from core.embeddings.map_quality import FIGURES, REFERENCE_TITLES

    lines = []
    sw = out["spaces"].get("s(W)") or {}
    names = {"embedding": "embedding", "umap": "2-D UMAP", "pca": "2-D PCA"}
    for fig in FIGURES:
        ref = out["reference"].get(fig)
        for space, name in names.items():
            v = (out["spaces"].get(space) or {}).get(fig)
            w = sw.get(fig)
            if v is None or w is None or ref is None:
                continue
            text = (
                f"{v:.3f} vs s(W) {w:.3f} (effect {v - w:+.3f}), {REFERENCE_TITLES[fig]} {ref:.3f}"
            )
            ceiling = out["reference"].get("task_ceiling")
            if fig == "task_accuracy" and ceiling is not None:  # what no space can exceed
                text += f", ceiling {ceiling:.3f}"
            if v <= ref:
                outcome, why = "disagree", "no better than the predictor that ignores the weights"
            elif v < w - MAP_QUALITY_MARGIN:
                outcome, why = "disagree", f"behind s(W) by more than {MAP_QUALITY_MARGIN}"
            else:
                outcome, why = "agree", f"within {MAP_QUALITY_MARGIN} of s(W) or ahead"
            lines.append(
                verdict_line(outcome, f"{fig.replace('_', ' ')}, {name}", f"{text}; {why}")
            )
    return lines


def permutation_verdicts(out: dict[str, Any]) -> list[str]:
    """Issue 25's permutation target: a function-preserving permuted copy lands within
    ``target`` (0.1) of the median inter-model distance of its original
    (``core.embeddings.invariance.permutation_invariance``'s result). Per family, on the learned
    figure (the backbone on raw tokens): **agree** at or below the target, **disagree** above.
    Where the atlas embeds in canonical form, the line says that the embedding's figure is not
    learned: canonical form removes the permutation before the backbone sees the model. None
    for a result that was not measured (``skipped``) or has no ratios."""
    if out.get("skipped") or "learned" not in out:
        return []
    from core.embeddings.invariance import PERMUTATION_TARGET, family_models, ratio_families

    target = out.get("target", PERMUTATION_TARGET)
    emb, learned = out.get("embedding") or {}, out["learned"]
    lines = []
    for fam in ratio_families(learned):
        r = learned[fam]
        v = r["median_ratio"]
        outcome = "agree" if v <= target else "disagree"
        n = family_models(out, fam)
        text = f"{v:.3f} (max {r['max_ratio']:.3f}, {n} models) vs target <= {target}"
        if out.get("canonical"):
            e = (emb.get(fam) or {}).get("median_ratio")
            what = f"{fam}, learned permutation ratio (raw tokens)"
            text += (
                f"; what the backbone's training made of permutations. The atlas embedding's "
                f"{fmt(e)} is canonical form's (hidden units sorted by norm before encoding, so "
                "a permuted copy is the same input to the backbone, up to exact ties), not learned"
            )
        else:
            what = f"{fam}, embedding permutation ratio (no canonical form: what it learned)"
        lines.append(verdict_line(outcome, what, text))
    return lines


def prompt_verdicts(
    setting: str,
    task: str,
    sampled: dict[str, Any],
    prompts: dict[str, Any],
    epochs: list[int],
    chance: float | None,
) -> list[str]:
    """Sampled models against their own prompts, like for like.

    A prompt is comparable with a draw only when both carry batch-norm statistics estimated
    the same way (``prompts["prompt_batchnorm"] == "re-estimated"``: rebuilt from its tokens
    with batch norm re-estimated on the train split, as every draw); else the line is not
    testable. Two lines: zero-shot (epoch 0: would a perfect backbone reproduce the prompts?)
    and 003 Table 5's comparison, after ``TABLE5_EPOCH`` fine-tuning epochs (the nearest epoch
    >= 1 the run has), for fresh prompts on a held-out task.
    """
    accs = [v for v in prompts.get("prompt_val_accuracy") or [] if v is not None]
    if not accs:
        return []
    p = (statistics.fmean(accs), statistics.pstdev(accs) if len(accs) > 1 else 0.0)
    n = len(accs)
    like = prompts.get("prompt_batchnorm") == "re-estimated"
    unlike = (
        "batch-norm statistics differ between the arms (draws re-estimated on the train split, "
        "prompts scored with their own running statistics)"
    )
    e0 = epochs[0]
    lines = []
    what = (
        f"{setting} ({task}), epoch {e0}: sampled models reach their {n} prompts: sampled test "
        f"{sampled[f'epoch{e0}_mean']:.3f} ± {sampled[f'epoch{e0}_std']:.3f} vs prompts' "
        f"validation accuracy {p[0]:.3f} ± {p[1]:.3f}"
    )
    if like:
        outcome, text = compare((sampled[f"epoch{e0}_mean"], sampled[f"epoch{e0}_std"]), p, chance)
        lines.append(verdict_line(outcome, what, f"effect {text}; batch norm re-estimated in both"))
    else:
        lines.append(verdict_line(NOT_TESTABLE, what, unlike))
    if setting != "held-out" or prompts.get("source") != "fresh":
        return lines
    later = [e for e in epochs if e >= 1]
    e5 = min(later, key=lambda e: (abs(e - TABLE5_EPOCH), e)) if later else None
    claim = (
        f"held-out ({task}), Table 5: sampled models beat their {n} prompt examples after "
        f"{TABLE5_EPOCH} fine-tuning epochs"
    )
    if e5 is None:
        lines.append(verdict_line(NOT_TESTABLE, claim, "no fine-tuning epoch was run"))
    elif not like:
        lines.append(verdict_line(NOT_TESTABLE, claim, unlike))
    else:
        s = (sampled[f"epoch{e5}_mean"], sampled[f"epoch{e5}_std"])
        outcome, text = compare(s, p, chance)
        lines.append(verdict_line(
            outcome,
            f"{claim} (here epoch {e5}): sampled test {s[0]:.3f} ± {s[1]:.3f} vs prompts' "
            f"validation accuracy {p[0]:.3f} ± {p[1]:.3f}",
            f"effect {text}",
        ))  # fmt: skip
    return lines


def generation_verdicts(out: dict[str, Any]) -> list[str]:
    """003 Tables 3-5 / 001 C.2: sampled models start above random init and stay ahead during
    fine-tuning. Per setting and fine-tuning budget: sampled vs random init; then sampled vs
    their own prompts, like for like (``prompt_verdicts``)."""
    lines = []
    epochs = sorted(int(e) for e in out["config"]["epochs"])
    for setting in ("in-distribution", "held-out"):
        rows = {r["init"]: r for r in out["table"] if r["setting"] == setting}
        if "sampled" not in rows or "random" not in rows:
            continue
        task = rows["sampled"]["task"]
        chance = chance_accuracy(task)
        for e in epochs:
            s, r = rows["sampled"], rows["random"]
            outcome, text = compare(
                (s[f"epoch{e}_mean"], s[f"epoch{e}_std"]),
                (r[f"epoch{e}_mean"], r[f"epoch{e}_std"]),
                chance,
            )
            what = (
                f"{setting} ({task}), epoch {e}: sampled {s[f'epoch{e}_mean']:.3f} ± "
                f"{s[f'epoch{e}_std']:.3f} vs random init {r[f'epoch{e}_mean']:.3f} ± "
                f"{r[f'epoch{e}_std']:.3f}, chance {chance:.3f}"
            )
            lines.append(verdict_line(outcome, what, f"effect {text}"))
        prompts = (out.get("prompts") or {}).get(setting) or {}
        lines += prompt_verdicts(setting, task, rows["sampled"], prompts, epochs, chance)
    return lines
