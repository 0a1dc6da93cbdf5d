"""``weightatlas embed`` and ``weightatlas evaluate``: embeddings, maps, probes, layer reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.atlas import Atlas, EmbeddingTables
from core.catalog import backbone_budget
from core.cli.common import USER_PRESET, add_config_flags, add_json_flag, config_overrides, emit
from core.config import build_config
from core.embeddings.distances import atlas_distance, model_architecture, place_on_map
from core.embeddings.embed import embed
from core.embeddings.encode import EMBED_PRESETS, EmbedConfig
from core.embeddings.fidelity import layer_report
from core.embeddings.invariance import permutation_summary
from core.embeddings.map_quality import map_quality_markdown
from core.embeddings.probes import evaluate, probes_markdown
from core.embeddings.table import _model_path, embed_model_dir_full, neighbours
from core.errors import WeightAtlasError
from core.generation.evaluation import reconstruction_accuracy

# ------------------------------------------------------------ embed


def add_embed_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas embed``."""
    add_json_flag(p)
    p.add_argument("atlas", help="atlas directory (tokenized, with a trained backbone)")
    add_config_flags(p, "embed", USER_PRESET)
    p.add_argument("--model", default=None, help="embed one model directory or Hub id instead")
    p.add_argument("--k", type=int, default=5, help="neighbours to list with --model")
    p.add_argument("--window", type=int, default=None, help="tokens per encoder pass")
    p.add_argument("--halo", type=int, default=None, help="context tokens on each side")
    p.add_argument(
        "--batch-size", type=int, default=None, help="windows per encoder batch (default: preset's)"
    )
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process' share of the models when several embed at once (default: env RANK)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of processes sharing the work (default: env WORLD_SIZE, else 1)",
    )
    p.add_argument("--backbone", default=None, help="another backbone directory")


def run_embed_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas embed``; prints a short summary (``--json``: the result)."""
    shorthands = {"halo": args.halo, "window": args.window, "batch_size": args.batch_size}
    overrides = {**{k: v for k, v in shorthands.items() if v is not None}, **config_overrides(args)}
    if args.model is None:
        out = embed(
            args.atlas,
            args.preset,
            overrides,
            rank=args.rank,
            world_size=args.world_size,
            backbone_dir=args.backbone,
        )

        done = EmbeddingTables(out).tensors_path.exists()
        if not done:
            emit(args, {"out": str(out), "done": False}, f"embed: this rank's part written to {out}; "
                 "the maps are built when every rank has finished")  # fmt: skip
            return 0
        info = EmbeddingTables(out).info()
        ratio = info.get("pca_explained_variance_ratio") or []
        pca = f" (PCA axes explain {100 * sum(ratio[:2]):.0f}% of the variance)" if ratio else ""
        emit(
            args,
            {"out": str(out), "done": True, **info},
            f"embed: {info.get('n_models', '?')} models embedded in {info.get('latent_dim', '?')} "
            f"dimensions; UMAP and PCA maps{pca}\n"
            f"written to {out}\n"
            f"next: streamlit run explorer/app.py (type {args.atlas} in the sidebar), or "
            f"weightatlas evaluate {args.atlas}",
        )
        return 0
    cfg = build_config(EmbedConfig, EMBED_PRESETS, args.preset, overrides=overrides)
    path = _model_path(args.model, args.atlas)
    summ = embed_model_dir_full(path, args.atlas, cfg=cfg, progress=True)
    v = summ["z"].numpy()
    result = {
        "model": args.model,
        "path": str(path),
        "map": place_on_map(args.atlas, v),
        "neighbours": [{"id": i, "distance": d} for i, d in neighbours(args.atlas, v, args.k)],
        "atlas_distance": atlas_distance(
            args.atlas, v, architecture=model_architecture(path)
        ),  # issue 16, strangers
        "z": v.tolist(),
    }

    ad = result["atlas_distance"]
    near = ", ".join(f"{n['id']} ({n['distance']:.3f})" for n in result["neighbours"][:3])
    emit(
        args,
        result,
        f"embed: {args.model} ({path})\n"
        f"map position: UMAP {result['map']['umap'][0]:.2f}, {result['map']['umap'][1]:.2f}\n"
        f"nearest: {near}\n"
        f"atlas distance {ad['distance']:.4f} (mean {ad['metric']} distance to its {ad['k']} "
        f"nearest atlas models), percentile {ad['percentile']:.1f} of the atlas' own: "
        f"{ad['meaning']}\n"
        f"architecture in atlas: {'yes' if ad['architecture_in_atlas'] else 'no'} -- "
        f"{ad['architecture_note']}",
    )
    if ad["outside"] and getattr(args, "json", False):
        print(f"warning: {args.model} is {ad['meaning']}", file=sys.stderr)
    if not ad["architecture_in_atlas"] and getattr(args, "json", False):
        print(f"warning: {args.model}: {ad['architecture_note']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------ evaluate


def add_evaluate_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas evaluate``."""
    p.add_argument("atlas", help="an embedded atlas directory")
    add_config_flags(p, "probe", USER_PRESET)
    p.add_argument("--backbone", default=None, help="probe another backbone's embeddings")
    p.add_argument(
        "--layers",
        default=None,
        metavar="MODEL_ID",
        help="print the layer report of one model instead",
    )
    p.add_argument(
        "--encode-decode",
        default=None,
        metavar="FAMILY/TASK",
        help="print test accuracy of the val/test models of FAMILY/TASK (e.g. cnn/digits10) "
        "before and after an encode-decode through the backbone instead",
    )
    add_json_flag(p)


def run_evaluate_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas evaluate``; prints a short summary (``--json``: the result)."""
    if getattr(args, "encode_decode", None):
        family, _, task = args.encode_decode.partition("/")
        if not task:
            raise WeightAtlasError(f"--encode-decode {args.encode_decode!r}: use FAMILY/TASK")
        rows = reconstruction_accuracy(args.atlas, family, task, backbone_dir=args.backbone)
        lines = [f"{'model':48s} {'split':5s} {'orig':>6s} {'decoded':>8s} {'+bn':>6s} {'r2':>6s}"]
        for r in rows:
            bn = r.get("accuracy_decoded_bn")
            lines.append(
                f"{r['id'][-48:]:48s} {r['split']:5s} {r['accuracy_original']:6.3f} "
                f"{r['accuracy_decoded']:8.3f} {'' if bn is None else f'{bn:6.3f}':>6s} "
                f"{r['r2']:6.3f}"
            )
        emit(args, rows, "\n".join(lines))
        return 0
    if args.layers is not None:
        recs = layer_report(args.atlas, args.layers, args.backbone)
        if args.json:
            emit(args, [{k: v for k, v in r.items() if k not in ("original", "reconstructed")}
                        for r in recs], "")  # fmt: skip
            return 0
        print(f"{'layer':40s} {'kind':7s} {'shape':>18s} {'r2':>8s} {'mse':>10s} {'w1/std':>8s}")
        for r in recs:
            r2 = "n/a" if r["r2"] is None else f"{r['r2']:.3f}"
            w1 = "n/a" if r["w1_over_std"] is None else f"{r['w1_over_std']:.3f}"
            print(
                f"{r['name'][:40]:40s} {r['kind']:7s} {'x'.join(map(str, r['shape'])):>18s} {r2:>8s} {r['mse']:10.3g} {w1:>8s}"
            )
        return 0
    out = evaluate(
        args.atlas,
        preset=args.preset,
        backbone_dir=args.backbone,
        overrides=config_overrides(args),
    )
    a = Atlas.open(args.atlas)
    notes = []
    if args.preset == "ci":
        notes.append(
            "preset ci is a smoke test (3-fold CV, coarse hyper-parameter grids): it checks "
            "that the stage runs; use --preset demo for numbers to report."
        )
    trained = backbone_budget(Path(args.backbone) if args.backbone else a.backbone_dir)
    if trained.get("preset") == "ci":
        notes.append(
            f"the backbone was trained with the ci preset ({trained.get('steps', '?')} steps), "
            "a smoke test as well: its embeddings say little about the method."
        )
    text = probes_markdown(out).rstrip("\n")
    text += "\n\n**Map quality** (nearest neighbours)\n\n" + map_quality_markdown(
        out["map_quality"]
    )
    if out.get("permutation") is not None:
        text += "\n" + permutation_summary(out["permutation"])
    text += (
        f"\nwritten: {a.results_dir / 'probes.json'}, probes.md, map_quality.json and .md, "
        "permutation.json and .md"
    )
    text += "".join(f"\nnote: {n}" for n in notes)
    emit(args, out, text)
    return 0
