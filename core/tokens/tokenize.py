"""Weight tokenization: models <-> fixed-size weight tokens, and the ``tokenize`` stage.

A model becomes a sequence of ``N`` tokens of ``D`` values (papers 001 sec. 3.3, 003 sec. 2):

- ``dense`` (001): flatten each tensor, cut it into tokens of ``D``, zero-pad its last token.
- ``sparse`` (SANE): view each tensor as ``(c_out, rest)`` (1-d as ``(c, 1)``, 0-d as
  ``(1, 1)``), cut every row into tokens of ``D`` and zero-pad each row's last token.

Both are one vectorised strided copy per tensor into a preallocated ``(N, D)`` array. Real
values always form a prefix of a token, so ``valid (N,)`` (real values per token) is the mask.
Positions are 0-based ``[n, l, k]``: token index in the model, tensor (layer) index among the
tokenized tensors, token index within that tensor. Each tokenized tensor has a ``LayerEntry``
(name, shape, dtype, offset, count, rows, row_len, kind) that makes ``detokenize`` exact
(``torch.equal``) for every float dtype whose values fit float32 (fp32, fp16, bf16, fp8);
float64 is rounded to float32. Integer/bool/complex tensors and non-trainable buffers (batch-norm
statistics, ``num_batches_tracked``, decided from the module structure) are left out and
recorded in ``excluded`` so that generation can rebuild them.

The stage (``weightatlas tokenize ATLAS [--scheme dense|sparse] [--token-size D]``) streams each
accepted model tensor by tensor from its safetensors files (``safe_open``) into memory-mapped
shards ``ATLAS/tokens/shard-<hash>.safetensors`` (``tokens (N, D) f32``, ``valid (N,) i32``,
``positions (N, 3) i64``), appends one row per model to ``tokens/parts/rank-XXXXX.jsonl`` and
merges them into ``tokens/index.json`` and ``tokens/stats.json``. It is resumable (models already
indexed are skipped; shards are written atomically) and sharded by ``RANK``/``WORLD_SIZE``.
The default token size is 64: our zoo models are small (thousands of weights per tensor), and
64 keeps the dense padding low while giving the backbone enough tokens per model; the paper
uses 230 (dense) and 288 (sparse), available as presets ``paper-small`` (and ``paper-large``) / ``paper-sparse``.

    weightatlas tokenize ATLAS --scheme dense --token-size 64
    weightatlas bench tokenize
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import (
    Atlas,
    TokenTable,
    append_jsonl,
    atomic_write_bytes,
    dumps,
    read_jsonl,
    write_json,
)
from core.config import build_config, flatten, register_presets
from core.errors import RejectedModel, WeightAtlasError
from core.tokens.plan import ModelPlan, apply_plan, open_source, plan_dir, safetensors_files
from core.tokens.schemes import DEFAULT_SCHEME, DEFAULT_TOKEN_SIZE, get_scheme
from core.tokens.shards import write_shard
from core.tokens.store import read_index


@dataclass
class TokenizeConfig:
    """How models are cut into tokens and how the store is sharded.

    Attributes:
        scheme: a registered scheme (``dense`` or ``sparse``).
        token_size: values per token ``D``.
        shard_bytes: target source-weight bytes per shard file (a larger model gets its own).
    """

    scheme: str = "dense"
    token_size: int = DEFAULT_TOKEN_SIZE
    shard_bytes: int = 256 * 2**20


TOKENIZE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": {"scheme": "dense", "token_size": DEFAULT_TOKEN_SIZE, "shard_bytes": 16 * 2**20},
    # per-output-channel rows (SANE's neuron-wise cut): over 3 seeds of the demo backbone with
    # scale_tokens, family 0.94 -> 0.98 and kNN accuracy R² 0.22 -> 0.35 against dense tokens
    # (docs/results/README.md, session 9); 3.3x the tokens (72% padding at 64 values)
    "demo": {"scheme": "sparse", "token_size": DEFAULT_TOKEN_SIZE},
    # 001 Table 4: dense tokens of 230 for both HF-small and HF-large; SANE (003): sparse 288
    "paper-small": {"scheme": "dense", "token_size": 230, "shard_bytes": 2**30},
    "paper-large": {"scheme": "dense", "token_size": 230, "shard_bytes": 2**30},
    "paper-sparse": {"scheme": "sparse", "token_size": 288, "shard_bytes": 2**30},
}
register_presets("tokenize", TokenizeConfig, TOKENIZE_PRESETS)


# --------------------------------------------------------------------------- the stage


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world < 1 or not 0 <= rank < world:
        raise WeightAtlasError(f"bad rank {rank} for world size {world}")
    return rank, world


def _model_path(atlas: Atlas, row: dict[str, Any]) -> Path:
    p = Path(row["path"])
    return p if p.is_absolute() else atlas.root / p


def _groups(
    rows: list[dict[str, Any]], atlas: Atlas, shard_bytes: int
) -> list[list[dict[str, Any]]]:
    """Consecutive groups of models with about ``shard_bytes`` of weight files each."""
    groups: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        try:
            b = sum(f.stat().st_size for f in safetensors_files(_model_path(atlas, row)))
        except (WeightAtlasError, OSError, KeyError, TypeError):
            b = 0  # an unreadable model fails (with a record) when its group is tokenized
        if cur and size + b > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(row)
        size += b
    if cur:
        groups.append(cur)
    return groups


def _check_scheme(
    atlas: Atlas, index: dict[str, Any], scheme: str | None, token_size: int | None
) -> tuple[str, int]:
    info = atlas.info()
    have = (index.get("scheme"), index.get("token_size"))
    if have == (None, None) and "token_scheme" in info and (index["models"] or index["failed"]):
        have = (info["token_scheme"], info.get("token_size"))
    if have[0] is not None:
        scheme = have[0] if scheme is None else scheme
        token_size = have[1] if token_size is None else token_size
        if (scheme, token_size) != have:
            raise WeightAtlasError(
                f"{atlas.tokens_dir} holds scheme={have[0]} token_size={have[1]}, not "
                f"scheme={scheme} token_size={token_size}; use those or remove {atlas.tokens_dir}"
            )
    return scheme or DEFAULT_SCHEME, token_size or DEFAULT_TOKEN_SIZE


def tokenize(
    atlas: str | Path | Atlas,
    scheme: str | None = None,
    token_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    shard_bytes: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Tokenize the atlas' accepted models into ``ATLAS/tokens/`` (resumable, rank-sharded).

    Args:
        atlas: atlas directory.
        scheme: ``dense``/``sparse``; default: what the store already holds, else ``dense``.
        token_size: D; default: what the store already holds, else 64.
        rank, world_size: this process' share (default: env ``RANK``/``WORLD_SIZE``, else 0/1).
            Models are grouped into shards independently of the world size, and group ``g``
            goes to rank ``g % world_size``.
        shard_bytes: target weight bytes per shard.
        progress: show a tqdm bar.
        retry_failed: tokenize again the models that failed before (else they stay recorded).
        preset: a ``TOKENIZE_PRESETS`` name; with ``overrides`` (TokenizeConfig fields) it sets
            scheme, token size and shard size where the arguments above leave them None.
        only: tokenize only these model ids (the demo export's slim store); default all.

    Returns:
        ``stats.json`` as a dict (merged over all ranks' results so far).
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    rank, world = _rank_world(rank, world_size)
    tokens_dir = atlas.tokens_dir
    index = _forget_missing_shards(tokens_dir, read_index(tokens_dir))
    if preset is not None or overrides:
        base = build_config(TokenizeConfig, TOKENIZE_PRESETS, preset, overrides=overrides)
        # only what the preset or the overrides name: the rest stays the store's (or default)
        given = set(TOKENIZE_PRESETS.get(preset or "", {})) | set(flatten(overrides or {}))
        scheme = base.scheme if scheme is None and "scheme" in given else scheme
        token_size = base.token_size if token_size is None and "token_size" in given else token_size
        shard_bytes = base.shard_bytes if shard_bytes is None else shard_bytes
    scheme, token_size = _check_scheme(atlas, index, scheme, token_size)
    get_scheme(scheme)
    if token_size < 1:
        raise WeightAtlasError(f"token size must be >= 1, got {token_size}")
    overrides: dict[str, Any] = {"scheme": scheme, "token_size": token_size}
    if shard_bytes is not None:
        overrides["shard_bytes"] = shard_bytes
    cfg = build_config(TokenizeConfig, TOKENIZE_PRESETS, None, overrides=overrides)
    done = set(index["models"]) | (set() if retry_failed else set(index["failed"]))
    # Groups are cut from the whole sorted manifest, so they do not depend on the world size
    # or on what other ranks have finished; done models are skipped inside their group.
    # rows without weights (a slim atlas such as assets/demo keeps only some) are skipped
    rows = sorted(
        (r for r in atlas.accepted() if r.get("path") and (only is None or r["id"] in only)),
        key=lambda r: r["id"],
    )
    groups = [g for i, g in enumerate(_groups(rows, atlas, cfg.shard_bytes)) if i % world == rank]
    mine = [todo for g in groups if (todo := [r for r in g if r["id"] not in done])]
    part = TokenTable(tokens_dir).parts_dir / f"rank-{rank:05d}.jsonl"
    meta = {"format": "pt", "scheme": scheme, "token_size": str(token_size)}
    bar = tqdm(
        total=sum(len(g) for g in mine),
        desc=f"tokenize[{rank}/{world}]",
        disable=not progress,
        unit="model",
    )
    for group in mine:
        digest = hashlib.sha1("\n".join(r["id"] for r in group).encode()).hexdigest()[:16]
        records = _tokenize_group(
            atlas, group, f"shard-{digest}.safetensors", scheme, token_size, meta
        )
        append_jsonl(part, records)
        bar.update(len(group))
    bar.close()
    stats = merge_index(atlas)
    index = read_index(tokens_dir)
    if {r["id"] for r in rows} <= set(index["models"]) | set(index["failed"]):
        stats["duplicates"] = len(mark_duplicates(atlas, index))  # the last rank to finish
    return stats


def _forget_missing_shards(tokens_dir: Path, index: dict[str, Any]) -> dict[str, Any]:
    """Drop index rows whose shard file is gone, so that their models are tokenized again.

    A shard found damaged (``TokenStore``'s checksum) is repaired by deleting it and re-running
    the stage: its rows leave ``index.json`` and ``parts/*.jsonl`` (rewritten atomically).
    """
    gone = {
        mid for mid, m in index["models"].items() if not (tokens_dir / str(m["shard"])).is_file()
    }
    if not gone:
        return index
    table = TokenTable(tokens_dir)
    for part in sorted(table.parts_dir.glob("*.jsonl")):
        rows = list(read_jsonl(part))
        keep = [r for r in rows if not (r.get("status") == "ok" and r.get("id") in gone)]
        if len(keep) != len(rows):
            atomic_write_bytes(part, "".join(dumps(r) + "\n" for r in keep).encode())
    index["models"] = {k: v for k, v in index["models"].items() if k not in gone}
    if table.exists():
        write_json(table.index_path, index)
    return read_index(tokens_dir)


def find_duplicates(index: dict[str, Any], order: list[str] | None = None) -> dict[str, str]:
    """Duplicate id -> original id, from the token index' weight digests (``HASH_SCHEME``).

    The original of a group of copies is the first in ``order`` (manifest order: the copy
    collected first), else the smallest id; models without a digest are never duplicates.
    """
    rank = {mid: i for i, mid in enumerate(order or [])}
    groups: dict[str, list[str]] = {}
    for mid, m in index["models"].items():
        if m.get("digest"):
            groups.setdefault(m["digest"], []).append(mid)
    out: dict[str, str] = {}
    for ids in groups.values():
        ids.sort(key=lambda i: (rank.get(i, len(rank)), i))
        out.update({dup: ids[0] for dup in ids[1:]})
    return out


def mark_duplicates(
    atlas: str | Path | Atlas, index: dict[str, Any] | None = None
) -> dict[str, str]:
    """Record ``duplicate_of`` in the manifest and give every duplicate its original's split.

    Rows whose ``duplicate_of`` or ``split`` change are appended to ``manifest.jsonl`` (the last
    row per id wins); a duplicate's collect-time split is kept as ``split_collected``. Training
    leaves duplicates out; embeddings show each original once with a ``copies`` count.

    Returns:
        Duplicate id -> original id.
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    index = index if index is not None else read_index(atlas.tokens_dir)
    rows = atlas.manifest()
    dups = find_duplicates(index, [r["id"] for r in rows])
    by_id = {r["id"]: r for r in rows}
    changed = []
    for r in rows:
        orig = dups.get(r["id"])
        split = by_id[orig].get("split") if orig in by_id else r.get("split")
        if r.get("duplicate_of") == orig and r.get("split") == split:
            continue
        new = {**r, "duplicate_of": orig, "split": split}
        if orig is not None and "split_collected" not in r:
            new["split_collected"] = r.get("split")
        changed.append(new)
    if changed:
        append_jsonl(atlas.manifest_path, changed)
    return dups


def copies_of(manifest: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Original id -> ids of its duplicates (``duplicate_of`` in manifest rows)."""
    out: dict[str, list[str]] = {}
    for r in manifest:
        if r.get("duplicate_of"):
            out.setdefault(r["duplicate_of"], []).append(r["id"])
    return {k: sorted(v) for k, v in out.items()}


def _tokenize_group(
    atlas: Atlas,
    group: list[dict[str, Any]],
    shard: str,
    scheme: str,
    token_size: int,
    meta: dict[str, str],
) -> list[dict[str, Any]]:
    """Plan, then stream one group of models into one shard; failures become records."""
    failed: list[dict[str, Any]] = []
    planned: list[tuple[dict[str, Any], ModelPlan, Path]] = []
    for row in group:
        try:
            path = _model_path(atlas, row)
            plan, src = plan_dir(path, scheme, token_size, None)
            src.close()
            planned.append((row, plan, path))
        except Exception as e:  # one bad model never stops the run
            failed.append(_failure(row, e, scheme, token_size))
    while planned:
        jobs = [
            (r["id"], p, (lambda path=path, p=p: open_source(path, p))) for r, p, path in planned
        ]
        digests: dict[str, str] = {}
        checksums: dict[str, str] = {}
        try:
            offsets = write_shard(
                atlas.tokens_dir / shard, jobs, token_size, meta, digests, checksums
            )
            break
        except Exception as e:  # drop the model that failed mid-stream and rewrite the shard
            bad = _failing_model(jobs)
            if bad is None:
                raise
            row = next(r for r, _, _ in planned if r["id"] == bad)
            failed.append(_failure(row, e, scheme, token_size))
            planned = [t for t in planned if t[0]["id"] != bad]
    else:
        offsets = {}
    ok = []
    for row, plan, _ in planned:
        ok.append(
            {
                "id": row["id"],
                "status": "ok",
                "scheme": scheme,
                "token_size": token_size,
                "shard": shard,
                "offset": offsets[row["id"]],
                "n_tokens": plan.n_tokens,
                "n_values": plan.n_values,
                "family": row.get("family"),
                "split": row.get("split"),
                "digest": digests[row["id"]],
                "checksum": checksums[row["id"]],
                "layout": plan.layout,
                "layers": [e.to_dict() for e in plan.layers],
                "excluded": plan.excluded,
            }
        )
    return ok + failed


def _failing_model(
    jobs: list[tuple[str, ModelPlan, Callable[[], Any]]],
) -> str | None:
    """Find the first model whose tensors cannot be streamed (read each into a scratch buffer)."""
    for mid, plan, open_src in jobs:
        try:
            src = open_src()
        except Exception:
            return mid
        try:
            apply_plan(plan, src.get)
        except Exception:
            return mid
        finally:
            src.close()
    return None


def _failure(row: dict[str, Any], e: Exception, scheme: str, token_size: int) -> dict[str, Any]:
    reason = e.reason if isinstance(e, RejectedModel) else type(e).__name__
    detail = e.detail if isinstance(e, RejectedModel) else str(e)
    msg = f"{reason}: {detail}" if detail else reason
    return {
        "id": row["id"],
        "status": "failed",
        "reason": msg.splitlines()[0][:500],
        "scheme": scheme,
        "token_size": token_size,
    }


def merge_index(atlas: str | Path | Atlas) -> dict[str, Any]:
    """Merge per-rank parts into ``tokens/index.json`` and write ``tokens/stats.json``.

    Every rank merges when it finishes; a merge that raced with another rank's last rows is
    redone, so the last rank to finish leaves the complete index (readers use ``read_index``,
    which also reads unmerged parts, either way).
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    atlas.tokens_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        index = read_index(atlas.tokens_dir)
        index["models"] = dict(sorted(index["models"].items()))
        index["failed"] = dict(sorted(index["failed"].items()))
        write_json(atlas.tokens.index_path, index)
        stats = index_stats(index)
        write_json(atlas.tokens.stats_path, stats)
        again = read_index(atlas.tokens_dir)
        if again["models"].keys() == index["models"].keys() and again["failed"] == index["failed"]:
            break
    return stats


def index_stats(index: dict[str, Any]) -> dict[str, Any]:
    """Dataset statistics: tokens, real values, padding fraction, per family and per kind."""
    d = index.get("token_size") or 0
    fam: dict[str, dict[str, int]] = {}
    kinds: Counter[str] = Counter()
    n_tok = n_val = 0
    for m in index["models"].values():
        f = fam.setdefault(m.get("family") or "unknown", {"models": 0, "tokens": 0, "values": 0})
        f["models"] += 1
        f["tokens"] += m["n_tokens"]
        f["values"] += m["n_values"]
        n_tok += m["n_tokens"]
        n_val += m["n_values"]
        for e in m["layers"]:
            kinds[e["kind"]] += e["count"]
    for f in fam.values():
        f["padding_fraction"] = 1 - f["values"] / (f["tokens"] * d) if f["tokens"] else 0.0
    return {
        "scheme": index.get("scheme"),
        "token_size": index.get("token_size"),
        "models": len(index["models"]),
        "failed": len(index["failed"]),
        "tokens": n_tok,
        "values": n_val,
        "padding_fraction": 1 - n_val / (n_tok * d) if n_tok else 0.0,
        "token_bytes": n_tok * d * 4,
        "per_family": dict(sorted(fam.items())),
        "tokens_per_kind": dict(sorted(kinds.items())),
    }
