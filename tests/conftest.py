"""Shared fixtures: real tiny atlases, built once per session and copied for each test module.

``atlas_factory(spec, backbone)`` trains the spec's zoo, collects and tokenizes it the first time a
spec is asked for (real models, real safetensors files, the real stages), then hands every caller
its own copy with the given backbone saved in it, so that a module that writes into its atlas
(embeddings, results, generated models) cannot change another module's. ``TINY`` is the atlas the
embed, evaluate and app tests share: mlp and cnn on wine and digits10, three runs each.

Fixtures and helpers that several test files use live here too (issue 24: tests are named after
the module they test, so one stage's tests now span files): ``small_atlas``, ``probe_atlas``,
``cnn_atlas``, ``syn``, ``ci_backbone``, ``ci_backbone_config``, ``tiny_backbone``,
``position_grid``, ``lying_offsets``, ``assert_exact`` and ``family_dirs``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.atlas import Atlas
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig, save_backbone
from core.collection.collect import collect
from core.collection.specs import resolve_arch
from core.config import build_config
from core.tokens.plan import detokenize
from core.tokens.tokenize import tokenize
from core.zoos.zoo import zoo


def pytest_configure(config: pytest.Config) -> None:
    """The user's workspace (``~/.cache/weightatlas/workspace``: the app's generated models and
    the list of known atlases) is a temporary folder for the whole run, subprocesses included:
    the tests left an empty workspace folder in the user's cache (issue 27)."""
    import os
    import tempfile

    if not os.environ.get("WEIGHTATLAS_TEST_WORKSPACE"):
        tmp = tempfile.mkdtemp(prefix="weightatlas-test-workspace-")
        os.environ["WEIGHTATLAS_TEST_WORKSPACE"] = tmp
        os.environ["WEIGHTATLAS_WORKSPACE"] = tmp
        config.add_cleanup(lambda: shutil.rmtree(tmp, ignore_errors=True))


@dataclass(frozen=True)
class AtlasSpec:
    """What a tiny zoo trains: families x ``task:runs``, epochs, kept checkpoints."""

    families: tuple[str, ...]
    tasks: tuple[str, ...]
    epochs: int = 2
    checkpoints: tuple[int, ...] = (1, 2)
    token_size: int = 64


TINY = AtlasSpec(("mlp", "cnn"), ("wine:3", "digits10:3"), epochs=3, checkpoints=(1, 3))

# the model-trees zoo (issue 26) the lineage tests and the browser's trees page build: mlp and
# cnn, 2 roots each, fine-tunes on four tasks, a grandchild, one wrong and one undeclared parent
TREES_ZOO = {
    "families": "mlp,cnn",
    "tasks": "digits10:1",
    "epochs": "8",
    "checkpoints": "8",
    "trees": "mlp/digits10:2,cnn/digits10:2",
    "tree_tasks": "digits10,digits-rot90,digits-0to4,digits-parity",
    "tree_grandchildren": "1",
    "tree_wrong": "1",
    "tree_undeclared": "1",
}


def ci_backbone(token_size: int = 64, seed: int = 0, **overrides: object) -> Backbone:
    """A real, untrained ``ci`` backbone (seeded), for atlases the tests embed with."""
    cfg = build_config(
        BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"token_size": token_size, **overrides}
    )
    torch.manual_seed(seed)
    return Backbone(cfg).eval()


def tiny_backbone(seed: int = 0) -> Backbone:
    """A real (untrained) backbone, small (d_model 16, one layer) so that ResNet-18-sized sequences stay quick."""
    cfg = build_config(
        BackboneConfig,
        BACKBONE_PRESETS,
        "ci",
        overrides={"d_model": 16, "n_layers": 1, "n_heads": 2, "latent_dim": 8},
    )
    torch.manual_seed(seed)
    return Backbone(cfg).eval()


def ci_backbone_config(**overrides: object) -> BackboneConfig:
    """The ``ci`` backbone config with ``overrides`` (the model, inference and encode tests')."""
    return build_config(BackboneConfig, BACKBONE_PRESETS, "ci", overrides=overrides)


def position_grid(B: int, T: int, start: int = 0) -> torch.Tensor:
    """``(B, T, 3)`` positions ``(n, n // 7, n % 7)`` for ``n`` in ``start .. start + T``."""
    n = torch.arange(start, start + T)
    return torch.stack([n, n // 7, n % 7], -1).expand(B, T, 3)


def _build(spec: AtlasSpec, root: Path) -> Path:
    z = zoo(
        "ci",
        root / "zoo",
        overrides={
            "families": spec.families,
            "tasks": spec.tasks,
            "epochs": spec.epochs,
            "checkpoints": spec.checkpoints,
        },
        progress=False,
    )
    atlas = root / "atlas"
    collect(atlas, overrides={"source": str(z)}, progress=False)
    tokenize(atlas, token_size=spec.token_size, progress=False)
    return root


@pytest.fixture(scope="session")
def atlas_factory(tmp_path_factory) -> Callable[[AtlasSpec, Backbone | None], Path]:
    """``make(spec, backbone)`` -> a fresh copy of the spec's tokenized atlas (built once); its
    zoo is beside it, ``atlas.parent / "zoo"``."""
    built: dict[AtlasSpec, Path] = {}

    def make(spec: AtlasSpec, backbone: Backbone | None = None) -> Path:
        if spec not in built:
            built[spec] = _build(spec, tmp_path_factory.mktemp("atlas-src"))
        root = tmp_path_factory.mktemp("atlas")
        shutil.copytree(built[spec], root, dirs_exist_ok=True, symlinks=True)
        atlas = root / "atlas"
        if backbone is not None:
            save_backbone(backbone, Atlas(atlas).backbone_dir)
        return atlas

    return make


def tiny_hf_cache(cache: Path) -> dict[str, Path]:
    """A Hugging Face cache (``models--ORG--NAME/snapshots/REV``) of three tiny transformers
    models built here: a ViT without head (3 channels, 32 px), a ViT classifier with 10 labels
    (3 channels, 32 px) and a BERT without head."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification, ViTModel

    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    vit.update(image_size=32, patch_size=8, num_channels=3)
    bert = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    bert.update({"intermediate_size": 64, "max_position_embeddings": 64})
    models = {
        "tiny/vit-features": ViTModel(ViTConfig(**vit)),
        "tiny/vit-classifier": ViTForImageClassification(ViTConfig(**vit, num_labels=10)),
        "tiny/bert-features": BertModel(bert),
    }
    out = {}
    for repo, model in models.items():
        torch.manual_seed(0)
        rev = hashlib.sha1(repo.encode()).hexdigest()  # a commit-hash-like folder name
        snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
        model.save_pretrained(snap)  # config.json + model.safetensors
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text(rev)
        out[repo] = snap
    return out


@pytest.fixture(scope="module")
def probe_atlas(atlas_factory) -> Path:
    """TINY with a ci backbone, embedded: zoo -> collect -> tokenize -> embed (one per module)."""
    from core.embeddings.embed import embed

    atlas = atlas_factory(TINY, ci_backbone())
    embed(atlas)
    return atlas


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """A synthetic embedded atlas of 240 models (explorer.bench), for the app and figure tests."""
    from explorer.bench import synthetic_atlas

    return synthetic_atlas(tmp_path_factory.mktemp("syn") / "atlas", n=240, seed=1)


def lying_offsets(st: bytes) -> bytes:
    """Same data, but the second of two equal-sized tensors claims the first one's bytes."""
    n = int.from_bytes(st[:8], "little")
    header = json.loads(st[8 : 8 + n])
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    by_size: dict[int, str] = {}
    for k, v in entries:
        size = v["data_offsets"][1] - v["data_offsets"][0]
        if size in by_size:
            header[k]["data_offsets"] = list(header[by_size[size]]["data_offsets"])
            break
        by_size[size] = k
    else:
        raise AssertionError("no two tensors of equal size")
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + st[8 + n :]


@pytest.fixture(scope="module")
def cnn_atlas(atlas_factory) -> Path:
    """zoo (two cnn runs on digits10) -> collect -> tokenize, plus an untrained backbone."""
    return atlas_factory(AtlasSpec(("cnn",), ("digits10:2",)), tiny_backbone())


@pytest.fixture(scope="module")
def small_atlas(atlas_factory) -> Path:
    """The shared tiny atlas (TINY: mlp and cnn on wine and digits10) with a ci backbone."""
    return atlas_factory(TINY, ci_backbone())


def assert_exact(tk, sd: dict[str, torch.Tensor]) -> None:
    """Every tokenized tensor comes back bit-identical; padding is zero; mask counts values."""
    back = detokenize(tk.tokens, tk.layers)
    assert set(back) == {e.name for e in tk.layers}
    for name, t in back.items():
        assert t.dtype == sd[name].dtype, name
        assert torch.equal(t, sd[name]), name
    assert tk.mask.shape == tk.tokens.shape
    assert int(tk.mask.sum()) == sum(sd[e.name].numel() for e in tk.layers)
    assert torch.count_nonzero(tk.tokens[~tk.mask]) == 0
    assert tk.tokens.dtype == torch.float32 and tk.positions.dtype == torch.int64


class FamilyDirs(dict):
    """Lazily built: one fresh model per zoo family, saved in its Hub format -> (model, dir)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        target = resolve_arch(f"zoo:{name}")
        model = target.build(seed=0)
        self[name] = (model, target.save(model, self.root / name))
        return self[name]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return FamilyDirs(tmp_path_factory.mktemp("families"))
