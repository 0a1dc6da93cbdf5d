"""Generation for every registered family, text targets included (issue 17).

Every family (image, tabular and sequence) generates from decoded tokens, is written in Hub
format, loads strictly and runs on its own task's inputs with finite outputs; an ``hf:`` text
target with a sequence task is scored on it; one with no task is generated unscored with a
note; a target that cannot be built or run on its task is a one-line error, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from conftest import AtlasSpec

from core.atlas import Atlas, GeneratedCard
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig
from core.cli import main as cli_main
from core.config import build_config
from core.generation.build import build_generated, decode_latents, encode_models
from core.generation.config import SampleConfig
from core.generation.draws import draw_latents
from core.generation.prompts import TargetError, model_tokens, resolve_target
from core.generation.sample import sample
from core.models.families import FAMILIES
from core.models.io import load_model_dir, save_model_dir
from core.models.registry import empty_model, logits
from core.zoos.tasks import get_task


def tiny_backbone(token_size: int = 64) -> Backbone:
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"token_size": token_size})
    torch.manual_seed(0)
    return Backbone(cfg).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_generates_loads_strictly_and_runs_on_its_task(family, tmp_path):
    fam = FAMILIES[family]
    target = resolve_target(f"zoo:{family}", "dense", 64)  # checks the fit to its task
    assert target.task == fam.default_task and target.note is None
    backbone = tiny_backbone()
    cfg = SampleConfig(batch_size=512)
    z = encode_models(backbone, [model_tokens(target.arch.build(3), target)], target, cfg)
    draws, _ = draw_latents(z, 2, torch.Generator().manual_seed(0))
    tokens = decode_latents(backbone, draws, target, cfg)
    model = build_generated(tokens[0], target, seed=0)
    out = target.arch.save(model, tmp_path / family)
    loaded = load_model_dir(out)  # strict: every key and shape
    assert loaded.family == target.arch.family
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    X, _ = get_task(target.task).split("test")
    with torch.no_grad():
        y = logits(loaded.model.eval(), X[:16])
    assert y.shape == (16, get_task(target.task).info.num_classes)
    assert torch.isfinite(y).all(), family


def _tiny_bert_dir(path: Path, head: str = "BertForMaskedLM", **kw) -> Path:
    """A Hub-format text model with no task in its card (or no card at all)."""
    cfg = transformers.BertConfig(
        vocab_size=kw.pop("vocab_size", 50),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        architectures=[head],
        **kw,
    ).to_dict()
    model, _ = empty_model(cfg)
    return save_model_dir(model, path, "transformers", card=None, config=cfg)


def test_text_target_unbuildable_on_an_image_task_is_one_error():
    """The issue's crash: a BERT target given digits10 died inside modeling_bert."""
    zoo_bert = FAMILIES["bert"].config(get_task("seq-brackets").info, 16, 1)
    with pytest.raises(TargetError, match=r"does not run on digits10 \(image, 1x8x8"):
        from core.collection.specs import ArchTarget

        target = resolve_target("zoo:cnn", "dense", 64)  # an image target, to reuse its class
        target.arch = ArchTarget("hf:bert", "transformers", "bert", zoo_bert, task="digits10")
        from core.generation.prompts import check_task_fit

        check_task_fit(target.arch.build(0), target)


@pytest.fixture(scope="module")
def seq_atlas(atlas_factory) -> Path:
    """zoo (bert, gpt2 on seq-brackets; cnn on digits10) -> collect -> tokenize, random backbone."""
    spec = AtlasSpec(("bert", "gpt2", "cnn"), ("seq-brackets:1", "digits10:1"))
    return atlas_factory(spec, tiny_backbone())


def test_hf_text_target_with_its_sequence_task_is_scored(seq_atlas, tmp_path, capsys):
    snap = next(
        Path(r["path"])
        for r in Atlas(seq_atlas).accepted()
        if r["id"] == "weightatlas-zoo/bert-seq-brackets-r0-e4"
    )
    paths = sample(
        seq_atlas, f"hf:{snap}", "ci", {"n": 3, "keep": 2, "seed": 0}, out_dir=tmp_path / "gen"
    )
    assert len(paths) == 2
    for p in paths:
        meta = GeneratedCard(p).meta()
        block = meta["weightatlas"]
        assert block["task"] == "seq-brackets" and block["scored"] is True
        assert 0.0 <= block["val_accuracy"] <= 1.0 and 0.0 <= block["test_accuracy"] <= 1.0
        assert block["prompt_source"] == "atlas"
        assert all("bert-seq-brackets" in pid for pid in block["prompts"])
        assert meta["model-index"][0]["results"][0]["task"]["type"] == "text-classification"
        # labelled against chance and a random init of the same architecture
        assert block["chance_accuracy"] == pytest.approx(0.5, abs=0.01)
        assert 0.0 <= block["random_init_val_accuracy"] <= 1.0
        assert block["at_chance"] == (block["val_accuracy"] <= block["chance_threshold"])
        text = GeneratedCard(p).text()
        assert ("**At chance level**" in text) == block["at_chance"]
        loaded = load_model_dir(p)
        X, _ = get_task("seq-brackets").split("test")
        assert torch.isfinite(logits(loaded.model, X[:8])).all()
    blocks = [GeneratedCard(p).block() for p in paths]
    err = capsys.readouterr().err
    warned = "warning: every kept model is at chance level on seq-brackets" in err
    assert warned == all(b["at_chance"] for b in blocks)
    # before the draws: encode-decode fidelity on the prompts, in the cards and on stderr
    b = blocks[0]
    r2, trips = b["round_trip_median_layer_r2"], b["round_trip_val_accuracy"]
    assert r2 <= 1.0 and len(trips) == len(b["prompts"]) and all(0 <= q <= 1 for q in trips)
    line = next(x for x in err.splitlines() if "encode-decode of the" in x)
    assert f"median per-layer R² of the weight matrices {r2:.3f}" in line
    chance, kept = b["chance_accuracy"], b["round_trip_retained"]
    low = (
        r2 < 0.5
        or all(q <= b["chance_threshold"] for q in trips)
        or (kept is not None and kept < 0.5)
    )
    assert b["fidelity_low"] is low
    assert line.startswith("warning: expect generated models near chance" if low else "fidelity:")
    for p, q in zip(b["prompt_scores"], trips):
        assert f"{p:.3f} -> {q:.3f}" in line
    if kept is not None:  # share of the prompts' accuracy above chance kept after the round trip
        gains = [
            (q - chance) / (p - chance)
            for p, q in zip(b["prompt_scores"], trips)
            if p > b["chance_threshold"]
        ]
        assert kept == pytest.approx(sum(gains) / len(gains))


def test_text_target_without_a_task_generates_unscored_with_a_note(seq_atlas, tmp_path, capsys):
    src = _tiny_bert_dir(tmp_path / "bert-mlm")  # no card: no task
    paths = sample(
        seq_atlas, f"hf:{src}", "ci", {"n": 3, "keep": 2, "seed": 0}, out_dir=tmp_path / "gen"
    )
    err = capsys.readouterr().err
    assert "note:" in err and "generated unscored" in err
    assert len(paths) == 2 and "unscored" in paths[0].name
    for p in paths:
        meta = GeneratedCard(p).meta()
        block = meta["weightatlas"]
        assert block["scored"] is False and block["task"] is None
        assert block["val_accuracy"] is None and block["test_accuracy"] is None
        assert "no task given" in block["note"] and "seq-brackets" in block["note"]
        assert block["prompt_source"] == "fresh"  # no atlas model has its layer table
        assert all(s is None for s in block["draw_val_accuracies"])
        assert "model-index" not in meta and "Unscored" in GeneratedCard(p).text()
        loaded = load_model_dir(p)  # strict
        assert type(loaded.model).__name__ == "BertForMaskedLM"
        ids = torch.randint(0, 50, (2, 7))
        assert torch.isfinite(logits(loaded.model, ids)).all()
    # a card naming a task the atlas does not know: unscored too, with that reason
    (src / "README.md").write_text("---\nweightatlas:\n  task: imdb-sentiment\n---\n# m\n")
    target = resolve_target(f"hf:{src}", "dense", 64)
    assert target.task is None and "'imdb-sentiment'" in target.note


@pytest.mark.parametrize(
    "make,task,expect",
    [
        # the case: a BERT text model given the image task digits10
        (lambda d: _tiny_bert_dir(d), "digits10", "does not run on digits10"),
        # a text model whose head does not give the task's class logits
        (lambda d: _tiny_bert_dir(d), "seq-brackets", "gives outputs of shape"),
        # a vocabulary too small for the task's token ids
        (
            lambda d: _tiny_bert_dir(d, "BertForSequenceClassification", vocab_size=3),
            "seq-majority",
            "does not run on seq-majority",
        ),
        # a config the library refuses to build (hidden size not a multiple of the heads)
        (
            lambda d: (
                d.mkdir(),
                (d / "config.json").write_text(
                    '{"model_type": "bert", "hidden_size": 17, "num_attention_heads": 2, '
                    '"architectures": ["BertModel"]}'
                ),
                d,
            )[-1],
            "seq-brackets",
            "",
        ),
    ],
)
def test_unbuildable_target_is_one_line(seq_atlas, tmp_path, capsys, make, task, expect):
    src = make(tmp_path / "m")
    argv = ["sample", str(seq_atlas), "--arch", f"hf:{src}", "--task", task, "--n", "2"]
    argv += ["--keep", "1", "--out", str(tmp_path / "gen")]
    assert cli_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("weightatlas sample: error: "), err
    assert expect in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "gen").exists() or not any((tmp_path / "gen").iterdir())


def test_fresh_prompts_train_at_the_task_scale_where_the_architecture_allows():
    """8x8 digits are not upsampled to 224 px unless the architecture needs it (issue 17)."""
    from core.generation.prompts import run_side, runnable

    sides = {}
    for spec in ("timm:resnet18", "timm:convnext_atto", "timm:vit_tiny_patch16_224"):
        target = resolve_target(spec, "dense", 64, task="digits10")
        assert target.image_size == 224
        sides[spec] = run_side(target.arch.build(0), target)
    # resnet18 runs at 8 px (global pooling); ConvNeXt's stride 32 needs 32 px; the ViT's fixed
    # 224 px patch grid needs 224
    assert sides == {
        "timm:resnet18": None,
        "timm:convnext_atto": 32,
        "timm:vit_tiny_patch16_224": 224,
    }
    target = resolve_target("timm:convnext_atto", "dense", 64, task="digits10")
    model = target.arch.build(0)
    net = runnable(model, target)
    X, _ = get_task("digits10").split("train")
    seen = []
    handle = model.stem.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    with torch.no_grad():
        out = logits(net, X[:4])
    handle.remove()
    assert seen == [32] and out.shape == (4, 10) and torch.isfinite(out).all()
