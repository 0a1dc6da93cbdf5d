"""The commands that build an atlas' data: ``zoo``, ``collect`` and ``tokenize``."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from core.atlas import Atlas, read_jsonl
from core.cli.common import USER_PRESET, add_config_flags, add_json_flag, config_overrides, emit
from core.collection.collect import collect, reasons_table, summary
from core.tokens.schemes import DEFAULT_TOKEN_SIZE, SCHEMES
from core.tokens.tokenize import tokenize
from core.zoos.zoo import ZOO_INDEX, zoo


# ------------------------------------------------------------ zoo
def add_zoo_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas zoo``."""
    add_config_flags(p, "zoo", "ci")
    p.add_argument("--out", required=True, help="output directory (written in HF cache layout)")
    p.add_argument("--seed", type=int, default=0, help="zoo seed (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new checkpoints")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (processes)")
    add_json_flag(p)


def run_zoo_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas zoo``; prints a short summary (``--json``: the result)."""
    out = zoo(
        args.preset,
        args.out,
        seed=args.seed,
        overrides=config_overrides(args),
        limit=args.limit,
        workers=args.workers,
    )
    done = (out / ZOO_INDEX).exists()
    rows = list(read_jsonl(out / ZOO_INDEX)) if done else []
    families = sorted({str(r["family"]) for r in rows if r.get("family")})
    tasks = sorted({str(r["task"]) for r in rows if r.get("task")})
    data = {"out": str(out), "complete": done, "checkpoints": len(rows)}
    data.update(families=families, tasks=tasks)
    if done:
        text = (
            f"zoo: {len(rows)} checkpoints ({len(families)} families x {len(tasks)} tasks) "
            f"written to {out} (HF cache layout)\n"
            f"next: weightatlas collect ATLAS --source {out}"
        )
    else:
        text = f"zoo: stopped after --limit; re-run the same command to finish {out}"
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ collect


def add_collect_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas collect``."""
    p.add_argument("atlas", help="atlas directory (created if needed)")
    # shorthands for `--set FIELD=VALUE` of the commonest CollectConfig fields
    p.add_argument(
        "--source",
        default=None,
        help="'hub' (default), 'hf-cache' (your Hugging Face cache), an HF cache dir "
        "(models--org--name/...) or a dir of model folders",
    )
    p.add_argument(
        "--tags", nargs="*", default=None, help="required tags, e.g. image-classification"
    )
    p.add_argument("--pipeline-tag", default=None, help="required pipeline tag")
    p.add_argument("--library", default=None, help="required library (transformers, timm, ...)")
    p.add_argument(
        "--sort",
        default=None,
        help="Hub listing order (downloads, likes, last_modified, ...)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many candidates")
    p.add_argument("--max-params", type=int, default=None, help="largest model (float values)")
    p.add_argument(
        "--n-train", type=int, default=None, help="stop once this many train models are accepted"
    )
    p.add_argument(
        "--n-val", type=int, default=None, help="stop once this many val models are accepted"
    )
    p.add_argument("--workers", type=int, default=None, help="concurrent candidates")
    add_config_flags(p, "collect", USER_PRESET)
    p.add_argument(
        "--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_json_flag(p)


def run_collect_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas collect``; prints a short summary (``--json``: the result)."""
    shorthands = ("source", "tags", "pipeline_tag", "library", "sort", "limit", "max_params")
    shorthands += ("n_train", "n_val", "workers", "endpoint")
    flags = {k: getattr(args, k) for k in shorthands if getattr(args, k) is not None}
    rows = collect(
        args.atlas, args.preset, {**flags, **config_overrides(args)}, progress=not args.no_progress
    )

    status = Counter(r.get("status") for r in rows)
    data = {
        "atlas": str(args.atlas),
        "candidates": len(rows),
        "accepted": status.get("accepted", 0),
        "rejected": status.get("rejected", 0),
        "splits": dict(Counter(r["split"] for r in rows if r.get("status") == "accepted")),
        "reasons": dict(reasons_table(rows)),
    }
    text = summary(rows) + f"\nmanifest: {Atlas(Path(args.atlas)).manifest_path}"
    if data["accepted"]:
        text += f"\nnext: weightatlas tokenize {args.atlas}"
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ tokenize
def add_tokenize_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas tokenize``."""
    p.add_argument("atlas", help="atlas directory (after `weightatlas collect`)")
    p.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        default=None,
        help="token scheme (default: the store's, else dense)",
    )
    p.add_argument(
        "--token-size",
        type=int,
        default=None,
        help=f"values per token (default: the store's, else {DEFAULT_TOKEN_SIZE})",
    )
    add_config_flags(p, "tokenize", None)
    p.add_argument("--shard-mb", type=float, default=None, help="target weight MiB per shard file")
    p.add_argument("--rank", type=int, default=None, help="this process' rank (default: env RANK)")
    p.add_argument(
        "--retry-failed", action="store_true", help="tokenize models that failed before again"
    )
    p.add_argument(
        "--world-size", type=int, default=None, help="number of processes (default: env WORLD_SIZE)"
    )

    add_json_flag(p)


def run_tokenize_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas tokenize``; prints a short summary (``--json``: the result)."""
    # --scheme, --token-size and --shard-mb are shorthands of TokenizeConfig fields: --set wins
    shard_bytes = None if args.shard_mb is None else int(args.shard_mb * 2**20)
    flags = {"scheme": args.scheme, "token_size": args.token_size, "shard_bytes": shard_bytes}
    stats = tokenize(
        args.atlas,
        rank=args.rank,
        world_size=args.world_size,
        retry_failed=args.retry_failed,
        preset=args.preset,
        overrides={**{k: v for k, v in flags.items() if v is not None}, **config_overrides(args)},
    )

    where = Path(args.atlas) / "tokens"
    if not stats.get("models") and not stats.get("failed"):
        text = (
            f"tokenize: nothing to tokenize in {args.atlas} (no accepted model in its manifest)\n"
            f"first: weightatlas collect {args.atlas} --source SOURCE"
        )
    else:
        text = (
            f"tokenize: {stats['models']} models cut into {stats['tokens']:,} tokens of "
            f"{stats['token_size']} values ({stats['scheme']} scheme, "
            f"{100 * stats['padding_fraction']:.1f}% padding); {stats['failed']} failed\n"
            f"token store: {where}\n"
            f"next: weightatlas train {args.atlas} --preset demo"
        )
    emit(args, {**stats, "out": str(where)}, text)
    return 0
