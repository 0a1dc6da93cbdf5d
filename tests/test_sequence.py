"""Sequence models (issue 17): a second modality through the same zoo, loaders and pipeline.

A tiny zoo of BERT- and GPT-2-style classifiers on the procedural sequence tasks, beside an
image and a tabular family, goes through collect -> tokenize -> train -> embed with no special
casing: every checkpoint is accepted, tokenized and embedded like the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import metadata_load

from core.atlas import Atlas
from core.models.families import FAMILIES
from core.models.io import load_model_dir
from core.models.registry import logits
from core.models.taskinfo import CLS_ID, PAD_ID
from core.zoos.tasks import (
    SEQUENCE_TASKS,
    bracket_sequences,
    evaluate,
    get_task,
    majority_sequences,
    sorted_sequences,
)
from core.zoos.zoo import read_zoo, zoo

SEQ_FAMILIES = [n for n, f in FAMILIES.items() if "sequence" in f.kinds]
TINY = {
    "families": ("bert", "gpt2", "mlp", "cnn"),
    "tasks": ("seq-brackets:1", "wine:1", "digits10:1"),
    "epochs": 2,
    "checkpoints": (1, 2),
}


def test_sequence_families_are_registered_for_an_encoder_and_a_decoder():
    assert {"bert", "gpt2"} <= set(SEQ_FAMILIES)
    archs = {
        FAMILIES[n].make_config(get_task("seq-brackets").info, 16, 1)["architectures"][0]
        for n in ("bert", "gpt2")
    }
    assert archs == {"BertForSequenceClassification", "GPT2ForSequenceClassification"}


@pytest.mark.parametrize("name", SEQUENCE_TASKS)
def test_sequence_task_labels_follow_their_rule(name):
    task = get_task(name)
    info = task.info
    assert info.kind == "sequence" and info.input_dtype == torch.int64
    seen = set()
    for split in ("train", "val", "test"):
        X, y = task.split(split)
        assert X.shape[1] == info.seq_len and (X[:, 0] == CLS_ID).all()
        assert int(X.min()) >= 0 and int(X.max()) < info.vocab_size
        assert not (X == PAD_ID).any()
        s = (X[:, 1:] - 2).numpy()  # symbol indices
        if name == "seq-majority":
            counts = np.stack([(s == k).sum(1) for k in range(info.num_classes)], 1)
            assert np.array_equal(counts.argmax(1), y.numpy())
        elif name == "seq-sorted":
            assert np.array_equal(np.all(s[:, 1:] >= s[:, :-1], axis=1), y.numpy() == 1)
        else:
            depth = np.cumsum(np.where(s == 0, 1, -1), axis=1)
            assert (depth[:, -1] == 0).all()  # as many "(" as ")": counting cannot decide
            assert np.array_equal(depth.min(1) >= 0, y.numpy() == 1)
        rows = {r.tobytes() for r in X.numpy()}
        assert len(rows) == len(X) and not rows & seen  # no duplicate, no leak across splits
        seen |= rows


def test_sequence_generators_are_seeded():
    for fn, args in (
        (majority_sequences, (5, 8, 3)),
        (sorted_sequences, (5, 8, 4)),
        (bracket_sequences, (5, 8)),
    ):
        a, b, c = fn(*args, seed=1), fn(*args, seed=1), fn(*args, seed=2)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])


@pytest.fixture(scope="module")
def seq_zoo(tmp_path_factory) -> Path:
    return zoo("ci", tmp_path_factory.mktemp("seq") / "zoo", overrides=TINY, progress=False)


def test_sequence_checkpoints_are_hub_repos_with_cards(seq_zoo):
    rows = [r for r in read_zoo(seq_zoo) if r["family"] in SEQ_FAMILIES]
    assert {r["family"] for r in rows} == {"bert", "gpt2"} and len(rows) == 4
    x, _ = get_task("seq-brackets").split("test")
    for row in rows:
        snap = seq_zoo / row["path"]
        meta = metadata_load(snap / "README.md")
        assert meta["pipeline_tag"] == "text-classification"
        assert meta["datasets"] == ["weightatlas/seq-brackets"] and meta["weightatlas"] == {
            k: row[k] for k in meta["weightatlas"]
        }
        loaded = load_model_dir(snap)  # strict
        assert loaded.family == row["family"]
        m = evaluate(loaded.model, "seq-brackets", "test")
        assert round(m.accuracy, 6) == row["test_accuracy"]
        # transformers' own loader reads the repo from the cache by id, same weights and logits
        theirs = transformers.AutoModelForSequenceClassification.from_pretrained(
            row["id"], cache_dir=seq_zoo, local_files_only=True
        ).eval()
        assert torch.equal(logits(theirs, x[:8]), logits(loaded.model, x[:8]))


def test_collect_tokenize_train_embed_take_sequence_models_like_the_rest(seq_zoo, tmp_path):
    from core.backbone.train import train
    from core.collection.collect import collect
    from core.embeddings.embed import embed
    from core.embeddings.table import load_embeddings
    from core.tokens.store import read_index
    from core.tokens.tokenize import tokenize

    atlas = tmp_path / "atlas"
    collect(atlas, overrides={"source": str(seq_zoo)}, progress=False)
    a = Atlas.open(atlas)
    by_id = {r["id"]: r for r in a.manifest()}
    zoo_ids = {r["id"] for r in read_zoo(seq_zoo)}
    seq_ids = {i for i in zoo_ids if i.split("/")[1].split("-")[0] in SEQ_FAMILIES}
    assert len(seq_ids) == 4
    for i in zoo_ids:
        assert by_id[i]["status"] == "accepted", (i, by_id[i].get("reason"))
    assert {by_id[i]["family"] for i in seq_ids} == {"bert", "gpt2"}
    assert {by_id[i]["library"] for i in seq_ids} == {"transformers"}

    tokenize(atlas, progress=False)
    index = read_index(a.tokens_dir)
    models = index["models"]
    for i in seq_ids:
        assert i in models and models[i]["n_tokens"] > 0
    # the word embeddings are tokenized like any other layer
    kinds = {e["kind"] for i in seq_ids for e in models[i]["layers"]}
    assert {"embedding", "linear", "norm"} <= kinds

    train(atlas, preset="ci", overrides={"steps": 6, "eval_every": 3, "ckpt_every": 3})
    embed(atlas)
    emb = load_embeddings(atlas)
    ids = [m["id"] for m in emb.models]
    assert set(ids) >= zoo_ids
    z = np.asarray(emb.z)[[ids.index(i) for i in sorted(seq_ids)]]
    assert np.isfinite(z).all() and z.std(0).sum() > 0  # four distinct, finite embeddings
