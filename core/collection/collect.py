"""Collection: candidate models from the Hugging Face Hub, an HF cache or a directory -> manifest.

Paper 001, section 2: query the Hub by tags, keep only models that instantiate with their
library's own classes (no remote code) and that tokenize, record why every other candidate was
dropped, and continue until N train and M validation models are accepted.

    weightatlas collect ATLAS --source hub --tags image-classification --limit 2000
    weightatlas collect ATLAS --source hub --tags image-classification --n-train 2000 --n-val 200
    weightatlas collect ATLAS --source zoo-ci                # an HF cache (models--org--name/...)
    weightatlas collect ATLAS --source hf-cache  # the user's Hugging Face cache
    weightatlas collect ATLAS --source ./my-models           # a plain directory of model folders
    weightatlas bench collect --n 1000

Sources are a small registry (``@register_source``): ``hub`` lists ``/api/models`` and
downloads ``config.json``, ``*.safetensors`` and ``README.md`` itself, with bounded HTTP that
never lets a server-supplied value name a path, into ``ATLAS/hub/`` (HF cache layout,
resumable; docs/safety.md); ``hf-cache`` and ``dir`` read local folders in place. Every candidate goes through the same checks, cheapest first, each with a reason:

1. header-only (``inspect_model_dir``, no tensor data read): ``remote code`` (a ``custom_code``
   tag, ``auto_map`` / ``custom_class`` in the config), ``no config`` / ``bad config`` /
   ``unknown config``, ``no safetensors`` (pickle-only repos; pickles are never opened),
   ``no weights``, ``truncated safetensors`` / ``bad safetensors header`` /
   ``inconsistent offsets`` (we parse the 8-byte length + JSON header ourselves and check that
   the offsets tile the data section exactly and match each shape and dtype),
   ``unsupported dtype``, ``too large`` (float values over ``max_params``);
2. deep (``check_model``): the library's own classes build the model from its config
   (``core.models.registry.empty_model``: ``unknown model_type``, ``unsupported architecture``,
   ...), ``non-finite weights`` (NaN/Inf), ``weights do not match config`` (names and shapes,
   strict as ``load_model_dir``; tied weights may be stored once), ``untokenizable`` (the dense
   token plan from shapes is empty).

Hub candidates are also pre-checked from the listing (``custom_code`` tag, pickle-only file
list, ``safetensors.total`` over the limit) so that such repos are never downloaded.

The manifest (``ATLAS/manifest.jsonl``, docs/interfaces.md) is appended to, one fsync'd row per
candidate written by one thread as workers finish; a run that completes then stores all rows in
model-id order (``Atlas.order_manifest``, one atomic rewrite), so the stored order does not
depend on worker timing and the stages that follow manifest order are reproducible. A re-run
skips ids already there, and a killed run resumes losing nothing: files already in ``ATLAS/hub/`` are not fetched again (a file appears there
only once verified). Network failures and protocol lies (timeouts, the per-candidate deadline,
redirect loops, short bodies, bad shas, ETag mismatches) are not recorded as rejections: those
candidates are retried on the next run. The split is a hash of the *run
key* (zoo cards: ``family-task-rN`` from the ``weightatlas:`` block, so one run's checkpoints
never straddle splits; otherwise the repo id) into train/val/test at 70/15/15 (``CollectConfig``).
With ``n_train`` / ``n_val``, candidates whose split is already full are skipped undownloaded
and the run stops once every quota is met; candidates in flight count against their split's
quota, so a quota is met exactly (one whose in-flight candidate is rejected takes the next).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, read_jsonl
from core.collection.checks import check_model, inspect_model_dir
from core.collection.config import COLLECT_PRESETS, CollectConfig
from core.collection.facts import (
    ModelFacts,
    _as_list,
    base_model_of,
    card_metrics,
    card_tags,
    run_key,
    split_of,
    zoo_labels,
)
from core.collection.sources import Candidate, Query, Source, Transient, make_source
from core.config import build_config, to_dict
from core.errors import DiskFullError, RejectedModel, WeightAtlasError
from core.safety import is_disk_full, printable

# ------------------------------------------------------------------------------ collect


def _transient_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # LocalEntryNotFoundError: snapshot_download could not reach the Hub and had no cached copy
    return (
        httpx2.HTTPError,  # transport errors, timeouts, redirect loops, short bodies
        HfHubHTTPError,
        LocalEntryNotFoundError,
        ConnectionError,
        TimeoutError,
    )


def _row(
    facts: ModelFacts,
    atlas: Atlas,
    cfg: CollectConfig,
    status: str,
    reason: str | None,
    detail: str,
) -> dict:
    card = facts.card
    labels = zoo_labels(card)
    files = os.listdir(facts.path) if facts.path is not None and facts.path.is_dir() else []
    base, relation = base_model_of(card, files)
    path = None
    if facts.path is not None:
        p = facts.path.absolute()
        try:
            path = p.relative_to(atlas.root.absolute()).as_posix()
        except ValueError:
            path = str(p)
    row = {
        "id": facts.id,
        "revision": facts.revision,
        "source": facts.source,
        "status": status,
        "reason": reason,
        "detail": detail or None,
        "library": facts.library or card.get("library_name"),
        "model_type": facts.model_type,
        "architecture": facts.architecture,
        "family": facts.family,
        "params": facts.params,
        "tags": facts.hub_tags if facts.hub_tags is not None else card_tags(card),
        "pipeline_tag": facts.hub_pipeline_tag or card.get("pipeline_tag"),
        "datasets": [d for d in _as_list(card.get("datasets")) if isinstance(d, str)],
        "metrics": card_metrics(card),
        "license": card.get("license") if isinstance(card.get("license"), str) else None,
        "base_model": base,
        "base_model_relation": relation,
        "split": split_of(run_key(facts.id, labels), cfg.split_fractions),
        "path": path,
        "labels": labels,
    }
    return row


def process_candidate(
    cand: Candidate,
    source: Source,
    atlas: Atlas,
    cfg: CollectConfig,
    check_slots: threading.Semaphore | None = None,
) -> dict[str, Any]:
    """Fetch and check one candidate; return its manifest row (never raises for bad models).

    ``check_slots`` bounds how many deep checks (weights in memory) run at once while
    downloads and header checks of other candidates go on.

    Raises:
        Transient: a network failure (the candidate is retried on the next run).
    """
    facts = ModelFacts(
        id=cand.id,
        revision=cand.revision,
        source=source.kind,
        card=dict(cand.card),
        hub_tags=cand.tags,
        hub_pipeline_tag=cand.pipeline_tag,
    )
    try:
        if cand.error is not None:
            facts.path = cand.path
            raise cand.error
        try:
            path = source.fetch(cand, atlas)
        except _transient_errors() as e:
            raise Transient(
                f"{cand.id}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            ) from None
        inspect_model_dir(path, cfg, facts)
        with check_slots or contextlib.nullcontext():
            check_model(facts, cfg)
    except RejectedModel as e:
        return _row(facts, atlas, cfg, "rejected", e.reason, e.detail)
    except Transient:
        raise
    except Exception as e:  # an untrusted model must never stop the run
        if is_disk_full(e):
            raise DiskFullError(
                f"disk full while writing {atlas.root} (collecting {cand.id}); nothing lost, "
                "re-run to resume"
            ) from e
        return _row(facts, atlas, cfg, "rejected", "check failed", f"{type(e).__name__}: {e}"[:500])
    return _row(facts, atlas, cfg, "accepted", None, "")


@dataclass
class _Quota:
    """Accepted models wanted per split, accepted so far, and candidates in flight per split."""

    need: dict[str, int]
    have: Counter = field(default_factory=Counter)
    inflight: Counter = field(default_factory=Counter)

    def full(self, split: str) -> bool:
        return split in self.need and self.have[split] >= self.need[split]

    def room(self, split: str) -> bool:
        return split not in self.need or self.have[split] + self.inflight[split] < self.need[split]

    def met(self) -> bool:
        return bool(self.need) and all(self.have[s] >= n for s, n in self.need.items())


class _Feed:
    """Candidates in source order, minus done ids and splits whose quota is full.

    A candidate whose split is only full counting the ones in flight is deferred, not dropped:
    if one in flight is rejected, it is tried next. So quotas are met exactly, never exceeded.
    """

    def __init__(
        self, src: Source, done: set[str], quota: _Quota, cfg: CollectConfig, stats: Counter
    ):
        self.it = src.candidates()
        self.kind = src.kind
        self.done, self.quota, self.cfg, self.stats = done, quota, cfg, stats
        self.deferred: list[tuple[Candidate, str]] = []
        self.exhausted = False

    def next(self) -> tuple[Candidate, str] | None:
        """The next candidate to submit and its split hint, or None for now."""
        for i, (_cand, hint) in enumerate(self.deferred):
            if self.quota.full(hint):
                self.stats["skipped (split full)"] += 1
                self.deferred.pop(i)
                return self.next()
            if self.quota.room(hint):
                return self.deferred.pop(i)
        while not self.exhausted:
            try:
                cand = next(self.it, None)
            except _transient_errors() as e:
                raise WeightAtlasError(
                    f"listing {self.kind} failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); what was collected is kept, re-run to resume"
                ) from None
            if cand is None:
                self.exhausted = True
                break
            if cand.id in self.done:
                self.stats["skipped (done)"] += 1
                continue
            self.done.add(cand.id)
            hint = split_of(run_key(cand.id, zoo_labels(cand.card)), self.cfg.split_fractions)
            if self.quota.full(hint):
                self.stats["skipped (split full)"] += 1
                continue
            if not self.quota.room(hint):
                self.deferred.append((cand, hint))
                continue
            return cand, hint
        return None


def collect(
    atlas: Atlas | str | Path,
    preset: str | None = "demo",
    overrides: Mapping[str, Any] | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Collect candidate models from ``source`` into the atlas manifest (resumable).

    Args:
        atlas: atlas directory (created if needed).
        preset: a ``COLLECT_PRESETS`` name (None: the ``CollectConfig`` defaults).
        overrides: ``CollectConfig`` fields: what to collect (``source``, ``tags``, ``limit``,
            ``n_train``, ...) and the limits (timeouts, byte limits, ``max_params``, ...).
        progress: show a tqdm bar.

    Returns:
        All manifest rows of the atlas after this run (last row per id).
    """
    cfg = build_config(CollectConfig, COLLECT_PRESETS, preset, overrides=overrides)
    _check_config(cfg)
    check_slots = threading.BoundedSemaphore(cfg.check_workers)
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.create(atlas)
    query = Query(cfg.tags, cfg.pipeline_tag, cfg.library, cfg.sort, cfg.limit)
    src = make_source(cfg.source, query, cfg, cfg.endpoint)
    _record_source(atlas, src, cfg)

    done, quota = _resume_state(atlas, cfg)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar for the whole collection, not one per file
    stats: Counter = Counter()
    bar = tqdm(desc=f"collect {src.kind}", unit="model", disable=not progress)
    feed = _Feed(src, done, quota, cfg, stats)
    retry: list[str] = []
    ex = ThreadPoolExecutor(cfg.workers, thread_name_prefix="collect")
    try:
        pending: dict[Future, str] = {}  # future -> split hint
        while True:
            while len(pending) < 2 * cfg.workers and not quota.met():
                item = feed.next()
                if item is None:
                    break
                cand, hint = item
                quota.inflight[hint] += 1
                fut = ex.submit(process_candidate, cand, src, atlas, cfg, check_slots)
                pending[fut] = hint
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            rows = []
            for fut in finished:
                quota.inflight[pending.pop(fut)] -= 1
                try:
                    rows.append(fut.result())
                except Transient as e:
                    stats["network errors (retry later)"] += 1
                    retry.append(str(e)[:300])
                    tqdm.write(printable(f"collect: {e}; will retry on the next run"))
            append_jsonl(atlas.manifest_path, rows)
            for row in rows:
                stats[row["status"]] += 1
                if row["status"] == "accepted":
                    quota.have[row["split"]] += 1
            bar.update(len(rows))
            bar.set_postfix(accepted=stats["accepted"], rejected=stats["rejected"])
    except BaseException:
        # a failed listing, a full disk, Ctrl-C: what is in the manifest stays, the rest is
        # retried on the next run; queued candidates are not started
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    ex.shutdown(wait=True)
    bar.close()
    atlas.order_manifest()  # rows were appended as workers finished; store them in id order
    _record_source(atlas, src, cfg, stats, retry)
    return atlas.manifest()


def _check_config(cfg: CollectConfig) -> None:
    """Refuse, in one line, split fractions, limits and worker counts that cannot work."""
    split_of("", cfg.split_fractions)  # validate early
    for name, v in (
        ("limit", cfg.limit),
        ("n_train", cfg.n_train),
        ("n_val", cfg.n_val),
        ("max_params", cfg.max_params),
    ):
        if v is not None and v < 0:
            raise WeightAtlasError(f"{name} must be >= 0, got {v}")
    if min(cfg.workers, cfg.check_workers) < 1:
        raise WeightAtlasError(
            f"workers and check_workers must be >= 1, got {cfg.workers}, {cfg.check_workers}"
        )


def _resume_state(atlas: Atlas, cfg: CollectConfig) -> tuple[set[str], _Quota]:
    """Ids already in the manifest (skipped) and the quotas with its accepted rows counted."""
    done: set[str] = set()
    quota = _Quota({s: n for s, n in (("train", cfg.n_train), ("val", cfg.n_val)) if n is not None})
    for row in read_jsonl(atlas.manifest_path):
        done.add(row["id"])
        if row.get("status") == "accepted":
            quota.have[row.get("split")] += 1
    return done, quota


def _record_source(
    atlas: Atlas,
    src: Source,
    cfg: CollectConfig,
    stats: Counter | None = None,
    retry: list[str] | None = None,
) -> None:
    entry = src.describe()
    sources = [
        s
        for s in atlas.info().get("sources", [])
        if (s.get("kind"), s.get("spec")) != (entry["kind"], entry["spec"])
    ]
    entry["collect_config"] = to_dict(cfg)
    if stats is not None:
        entry["last_run"] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(stats)}
        if retry:  # why candidates were left for the next run (network, deadline, protocol)
            entry["last_run"]["retry_later"] = retry[:100]
    atlas.update_info(sources=[*sources, entry])


def reasons_table(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """``(reason, count)`` for rejected rows, most frequent first."""
    return Counter(r["reason"] for r in rows if r.get("status") == "rejected").most_common()


def summary(rows: list[dict[str, Any]]) -> str:
    """A short plain-text summary: accepted per split, then rejection reasons."""
    acc = Counter(r["split"] for r in rows if r.get("status") == "accepted")
    lines = [
        f"{len(rows)} candidates: {sum(acc.values())} accepted "
        f"(train {acc['train']}, val {acc['val']}, test {acc['test']}), "
        f"{len(rows) - sum(acc.values())} rejected"
    ]
    lines += [f"  {n:6d}  {reason}" for reason, n in reasons_table(rows)]
    return "\n".join(lines)
