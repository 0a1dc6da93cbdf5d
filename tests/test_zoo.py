"""Zoo factory: HF cache layout, cards vs zoo.jsonl, real loaders, determinism, resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import transformers
from huggingface_hub import ModelCard, metadata_load, scan_cache_dir

from core.cli import main as cli_main
from core.errors import WeightAtlasError
from core.models.families import FAMILIES
from core.models.io import load_model_dir
from core.zoos.tasks import evaluate, get_task
from core.zoos.zoo import ZOO_PRESETS, ZooConfig, plan, read_zoo, repo_dir, snapshot_dir, zoo

# one family per library and kind, two tasks; timm-vit has epoch_scale 2 (checkpoints 2 and 6)
MINI = {
    "families": "resnet,timm-vit,cnn,mlp",
    "tasks": "digits10:1,wine:1",
    "epochs": "3",
    "checkpoints": "1,3",
}
MINI_IDS = {
    "weightatlas-zoo/resnet-digits10-r0-e1",
    "weightatlas-zoo/resnet-digits10-r0-e3",
    "weightatlas-zoo/timm-vit-digits10-r0-e2",
    "weightatlas-zoo/timm-vit-digits10-r0-e6",
    "weightatlas-zoo/cnn-digits10-r0-e1",
    "weightatlas-zoo/cnn-digits10-r0-e3",
    "weightatlas-zoo/mlp-digits10-r0-e1",
    "weightatlas-zoo/mlp-digits10-r0-e3",
    "weightatlas-zoo/mlp-wine-r0-e1",
    "weightatlas-zoo/mlp-wine-r0-e3",
}


def _files(out: Path) -> dict[str, bytes]:
    """Every file of every repo (symlinks resolved), keyed by path relative to ``out``."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.glob("models--*/**/*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    return zoo("ci", tmp_path_factory.mktemp("zoo") / "mini", overrides=MINI, progress=False)


def test_layout_is_an_hf_cache(mini):
    rows = read_zoo(mini)
    assert {r["id"] for r in rows} == MINI_IDS
    info = scan_cache_dir(mini)
    # zoo.jsonl / zoo.json sit beside the repos; scan_cache_dir reports them and nothing else
    assert {Path(str(w).split(": ")[-1]).name for w in info.warnings} <= {"zoo.jsonl", "zoo.json"}
    assert {r.repo_id for r in info.repos} == MINI_IDS
    for repo in info.repos:
        (rev,) = repo.revisions
        assert rev.refs == frozenset({"main"})
        assert {f.file_name for f in rev.files} == {"config.json", "model.safetensors", "README.md"}
        weights = rev.snapshot_path / "model.safetensors"
        assert weights.is_symlink()
        blob = weights.resolve()
        assert (
            blob.parent.name == "blobs"
            and blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()
        )


def test_cards_parse_and_match_zoo_jsonl(mini):
    for row in read_zoo(mini):
        snap = mini / row["path"]
        meta = metadata_load(snap / "README.md")
        labels = meta["weightatlas"]
        assert {k: row[k] for k in labels} == labels
        assert set(row) == set(labels) | {"id", "path"}
        assert row["task"] in meta["tags"] and row["family"] in meta["tags"]
        assert meta["datasets"] == [get_task(row["task"]).info.dataset]
        assert meta["library_name"] == FAMILIES[row["family"]].library
        card = ModelCard.load(snap / "README.md")
        (acc,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
        assert acc.metric_value == row["test_accuracy"] and acc.dataset_name == row["task"]
        assert row["generalization_gap"] == pytest.approx(
            row["train_accuracy"] - row["test_accuracy"], abs=1e-5
        )
        for key in (
            "epoch",
            "run",
            "seed",
            "lr",
            "weight_decay",
            "width",
            "depth",
            "test_loss",
            "train_loss",
        ):
            assert key in labels


def test_checkpoints_load_exactly_and_reproduce_their_metrics(mini):
    by_id = {r["id"]: r for r in read_zoo(mini)}
    for row in by_id.values():
        snap = mini / row["path"]
        loaded = load_model_dir(snap)
        stored = safetensors.torch.load_file(snap / "model.safetensors")
        assert stored.keys() == loaded.model.state_dict().keys()
        assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in stored.items())
        m = evaluate(loaded.model, row["task"], "test")
        assert round(m.accuracy, 6) == row["test_accuracy"]
        assert round(m.loss, 6) == pytest.approx(row["test_loss"], abs=1e-5)
    # the libraries' own loaders, from the cache by repo id
    hf = transformers.AutoModelForImageClassification.from_pretrained(
        "weightatlas-zoo/resnet-digits10-r0-e3", cache_dir=mini, local_files_only=True
    )
    ours = load_model_dir(mini / by_id["weightatlas-zoo/resnet-digits10-r0-e3"]["path"]).model
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in hf.state_dict().items())
    snap = mini / by_id["weightatlas-zoo/timm-vit-digits10-r0-e6"]["path"]
    cfg = json.loads((snap / "config.json").read_text())
    tm = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
    tm.load_state_dict(safetensors.torch.load_file(snap / "model.safetensors"), strict=True)
    x, _ = get_task("digits10").split("test")
    assert torch.equal(tm.eval()(x[:4]), load_model_dir(snap).model(x[:4]))
    # checkpoints of one run differ, and training helped
    e1, e3 = (
        by_id["weightatlas-zoo/cnn-digits10-r0-e1"],
        by_id["weightatlas-zoo/cnn-digits10-r0-e3"],
    )
    assert e1["seed"] == e3["seed"] and e1["lr"] == e3["lr"]
    assert e3["train_loss"] < e1["train_loss"]


def test_interrupted_build_resumes_to_identical_bytes(mini, tmp_path):
    out = tmp_path / "resumed"
    zoo("ci", out, overrides=MINI, limit=3, progress=False)
    assert not (out / "zoo.jsonl").exists()
    assert json.loads((out / "zoo.json").read_text())["complete"] is False
    first = sorted(out.glob("models--*"))
    assert len(first) == 3
    stamps = {p: (p / "refs" / "main").stat().st_mtime_ns for p in first}
    (out / ".tmp-models--weightatlas-zoo--half-written-123").mkdir()  # left by a killed writer
    zoo("ci", out, overrides=MINI, progress=False)
    assert {p: (p / "refs" / "main").stat().st_mtime_ns for p in first} == stamps  # never rewritten
    assert not list(out.glob(".tmp-*"))
    assert _files(out) == _files(mini)  # same preset + seed -> bit-identical repos
    assert (out / "zoo.jsonl").read_bytes() == (mini / "zoo.jsonl").read_bytes()
    info = json.loads((out / "zoo.json").read_text())
    assert info["complete"] is True and info["checkpoints"] == len(MINI_IDS)
    # a finished zoo is a no-op to rebuild
    before = _files(out)
    zoo("ci", out, overrides=MINI, progress=False)
    assert _files(out) == before


def test_seed_changes_runs_and_config_mismatch_is_refused(mini, tmp_path):
    cfg = ZooConfig(families=("mlp",), tasks=("wine:2",), epochs=2, checkpoints=(2,))
    a, b = plan(cfg), plan(ZooConfig(**{**cfg.__dict__, "seed": 1}))
    assert [r.seed for r in a] != [r.seed for r in b]
    with pytest.raises(WeightAtlasError, match="another config"):
        zoo("ci", mini, overrides={**MINI, "epochs": "2", "checkpoints": "1,2"}, progress=False)
    with pytest.raises(WeightAtlasError, match="unknown task"):
        zoo("ci", tmp_path / "x", overrides={"tasks": "imagenet:1"}, progress=False)


def test_presets_meet_their_budgets_on_paper():
    for name, min_ckpts in (("ci", 30), ("demo", 250), ("full", 1000)):
        from core.config import build_config

        runs = plan(build_config(ZooConfig, ZOO_PRESETS, name))
        assert sum(len(r.checkpoints) for r in runs) >= min_ckpts
        assert len({r.family for r in runs}) >= 6
        assert all(len(r.checkpoints) >= 3 for r in runs)
    demo = plan(build_config(ZooConfig, ZOO_PRESETS, "demo"))
    assert len({r.task for r in demo}) >= 6 and len({r.lr for r in demo}) >= 4
    assert len({(r.family, r.width, r.depth) for r in demo}) > len(FAMILIES)


def test_cli_builds_and_reports_bad_overrides(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "zoo",
        "--preset",
        "ci",
        "--out",
        str(out),
        "--seed",
        "3",
        "--set",
        "families=mlp",
        "--set",
        "tasks=wine:1",
    ]
    assert cli_main(args + ["--set", "epochs=2", "--set", "checkpoints=1,2"]) == 0
    rows = read_zoo(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["test_accuracy"] > 0.5
    assert cli_main(["zoo", "--out", str(tmp_path / "bad"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_build_resumes(mini, tmp_path):
    """SIGKILL a real `weightatlas zoo` process mid-build, then finish it in-process."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "core.cli", "zoo", "--out", str(out)] + [
        a for k, v in MINI.items() for a in ("--set", f"{k}={v}")
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("models--*"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(out.glob("models--*")))
    assert 2 <= n_before < len(MINI_IDS)
    for repo in out.glob("models--*"):
        assert snapshot_dir(repo) is not None  # only whole repos are visible
    zoo("ci", out, overrides=MINI, progress=False)
    assert _files(out) == _files(mini)


@pytest.mark.slow
def test_ci_preset_budget_and_accuracy(tmp_path):
    out = zoo("ci", tmp_path / "ci", progress=False)  # wall time: --durations in .ci/run
    rows = read_zoo(out)
    assert len(rows) >= 30 and len({r["family"] for r in rows}) >= 6
    finals = [r for r in rows if r["epoch"] == r["max_epochs"]]
    for r in finals:  # every final checkpoint clearly beats chance (binary tasks: > 0.75)
        k = get_task(r["task"]).info.num_classes
        assert r["test_accuracy"] > min(2.0 / k, (1.0 + 1.0 / k) / 2), r["id"]
    assert {"bert", "gpt2"} <= {r["family"] for r in finals}  # the sequence modality
    digits = [r["test_accuracy"] for r in finals if r["task"] == "digits10"]
    assert sum(a >= 0.8 for a in digits) >= 0.8 * len(digits)
    assert repo_dir(out, "mlp-wine-r0-e8").is_dir()


def test_resolve_arch_finds_zoo_repos_in_the_cache(mini, tmp_path):
    from core.collection.specs import resolve_arch

    target = resolve_arch("hf:weightatlas-zoo/mlp-wine-r0-e3", cache_dir=mini)
    assert target.task == "wine" and target.library == "weightatlas" and target.family == "mlp"
    model = target.build(seed=0)
    out = target.save(model, tmp_path / "gen")
    loaded = load_model_dir(out)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in model.state_dict().items())
    assert metadata_load(out / "README.md")["library_name"] == "weightatlas"


@pytest.mark.slow
def test_parallel_build_is_identical(mini, tmp_path):
    out = zoo("ci", tmp_path / "par", overrides=MINI, workers=2, progress=False)
    assert _files(out) == _files(mini)
    assert (out / "zoo.jsonl").read_bytes() == (mini / "zoo.jsonl").read_bytes()


def test_homogeneous_zoos_fix_family_task_and_size():
    from dataclasses import replace

    from core.config import build_config

    cfg = build_config(ZooConfig, ZOO_PRESETS, "demo")
    assert len(cfg.zoos) >= 2
    runs = plan(cfg)
    names = [r.name(e) for r in runs for e in r.checkpoints]
    assert len(names) == len(set(names))  # zoo runs never collide with the task runs
    for entry in cfg.zoos:
        spec, n = entry.split(":")
        family, task = spec.split("/")
        zr = [r for r in runs if r.zoo == spec]
        assert len(zr) == int(n) >= 30 and all(len(r.checkpoints) >= 3 for r in zr)
        assert {(r.family, r.task) for r in zr} == {(family, task)}
        assert {(r.width, r.depth) for r in zr} == {
            (FAMILIES[family].widths[0], FAMILIES[family].depths[0])
        }
        assert len({r.lr for r in zr}) >= 2 and len({r.weight_decay for r in zr}) >= 2
        assert len({r.seed for r in zr}) == len(zr)
        others = [r.run for r in runs if (r.family, r.task) == (family, task) and r.zoo is None]
        assert min(r.run for r in zr) == max(others, default=-1) + 1
    # adding zoos leaves the other runs (and so their weights) exactly as they were
    assert plan(replace(cfg, zoos=())) == [r for r in runs if r.zoo is None]


@pytest.mark.parametrize(
    "entry, match",
    [("cnn:3", "FAMILY/TASK:RUNS"), ("cnn/digits10:0", "RUNS >= 1"), ("nope/digits10:3", "unknown zoo family"),
     ("cnn/wine:3", "cannot train"), ("cnn/nope:3", "unknown task")],
)  # fmt: skip
def test_bad_zoo_entries_are_one_line_errors(entry, match):
    with pytest.raises(WeightAtlasError, match=match):
        plan(ZooConfig(families=("cnn",), zoos=(entry,)))


def test_homogeneous_zoo_checkpoints_carry_the_zoo_label(tmp_path):
    over = {"families": "mlp", "tasks": "wine:1", "zoos": "mlp/wine:2", "epochs": "2",
            "checkpoints": "1,2"}  # fmt: skip
    out = zoo("ci", tmp_path / "z", overrides=over, progress=False)
    rows = {r["id"].split("/")[-1]: r for r in read_zoo(out)}
    assert sorted(rows) == [f"mlp-wine-r{r}-e{e}" for r in range(3) for e in (1, 2)]
    for name, r in rows.items():
        assert r.get("zoo") == (None if "-r0-" in name else "mlp/wine")
    assert len({(rows[n]["width"], rows[n]["depth"]) for n in rows if "-r0-" not in n}) == 1


def test_demo_tasks_preset_trains_every_demo_task_in_three_runs_per_family():
    """Map quality's task figure needs other runs of a model's family and task to vote."""
    from core.config import build_config

    demo = plan(build_config(ZooConfig, ZOO_PRESETS, "demo"))
    more = plan(build_config(ZooConfig, ZOO_PRESETS, "demo-tasks"))
    runs_per_pair = Counter((r.family, r.task) for r in more)
    assert {pair for pair, _ in Counter((r.family, r.task) for r in demo).items()} == set(
        runs_per_pair
    )
    assert min(runs_per_pair.values()) >= 2
    assert {n for (_, task), n in runs_per_pair.items() if task != "digits10"} == {3}
    single = sum(1 for n in Counter((r.family, r.task) for r in demo).values() if n == 1)
    assert single >= 20  # what the preset is for: the demo leaves these pairs unnameable
    # a superset of the demo: the same runs (seed and hyper-parameters), under the same names
    drawn = {r.name(max(r.checkpoints)): r for r in more}
    for r in demo:
        same = drawn[r.name(max(r.checkpoints))]
        assert (same.seed, same.lr, same.weight_decay, same.width, same.depth, same.zoo) == (
            r.seed,
            r.lr,
            r.weight_decay,
            r.width,
            r.depth,
            r.zoo,
        )


def test_seeds_preset_is_a_sane_style_seed_zoo():
    """003's zoos: one architecture, fixed hyper-parameters, many seeds, a large test set."""
    from core.config import build_config
    from core.zoos.tasks import accuracy_standard_error

    runs = plan(build_config(ZooConfig, ZOO_PRESETS, "seeds"))
    assert len(runs) >= 200 and {r.zoo for r in runs} == {"cnn/shapes16-probe"}
    assert len({(r.family, r.task, r.width, r.depth) for r in runs}) == 1
    assert len({(r.lr, r.weight_decay, r.epochs, r.checkpoints) for r in runs}) == 1
    assert len({r.seed for r in runs}) == len(runs)  # only the seed differs
    assert max(runs[0].checkpoints) >= 20 and len(runs[0].checkpoints) >= 5
    _, y = get_task("shapes16-probe").split("test")
    assert accuracy_standard_error(0.5, len(y)) <= 0.01


# model trees (issue 26): 2 MLP roots, 3 fine-tunes each (one with a new 5-class head), one
# grandchild, one merge and one fp16 copy per root; one wrong and one missing declaration
TREES = {
    "families": "mlp",
    "tasks": "digits10:1",
    "epochs": "3",
    "checkpoints": "3",
    "trees": "mlp/digits10:2",
    "tree_tasks": "digits10,digits-rot90,digits-0to4",
    "tree_epochs": "2",
    "tree_grandchildren": "1",
    "tree_wrong": "1",
    "tree_undeclared": "1",
}


@pytest.fixture(scope="module")
def tree_zoo(tmp_path_factory) -> Path:
    return zoo("ci", tmp_path_factory.mktemp("zoo") / "trees", overrides=TREES, progress=False)


def test_tree_zoo_cards_declare_lineage_and_zoo_json_keeps_the_truth(tree_zoo):
    info = json.loads((tree_zoo / "zoo.json").read_text())
    truth = {t["id"]: t for t in info["trees"]}
    assert len(truth) == 2 * (1 + 3 + 1 + 1 + 1)
    rows = {r["id"]: r for r in read_zoo(tree_zoo)}
    assert set(truth) < set(rows) and len(rows) == len(truth) + 1  # + the independent run
    kinds = [t["kind"] for t in truth.values()]
    assert kinds.count("root") == 2 and kinds.count("merge") == 2 and kinds.count("quantized") == 2
    assert sorted(t["planted"] for t in truth.values() if t["planted"]) == ["undeclared", "wrong"]
    for model_id, t in truth.items():
        card = metadata_load(snapshot_dir(repo_dir(tree_zoo, model_id.split("/")[1])) / "README.md")
        assert "planted" not in json.dumps(card) and "tree" not in card["weightatlas"]
        declared = card.get("base_model")
        declared = [declared] if isinstance(declared, str) else declared
        assert declared == t["declared"]
        if t["declared"]:
            assert card["base_model_relation"] == t["relation"]
        if t["planted"] == "wrong":
            assert not set(t["declared"]) & set(t["parents"])


def test_tree_nodes_start_from_their_parents(tree_zoo):
    truth = json.loads((tree_zoo / "zoo.json").read_text())["trees"]

    def weights(model_id: str) -> dict[str, torch.Tensor]:
        snap = snapshot_dir(repo_dir(tree_zoo, model_id.split("/")[1]))
        return safetensors.torch.load_file(snap / "model.safetensors")

    for t in truth:
        w = weights(t["id"])
        if t["kind"] == "quantized":
            src = weights(t["parents"][0])
            assert all(v.dtype == torch.float16 or v.dtype == torch.bfloat16 for v in w.values())
            assert all(torch.equal(w[k], src[k].to(w[k].dtype)) for k in w)
        elif t["kind"] == "merge":
            a, b = (weights(p) for p in t["parents"])
            assert all(torch.allclose(w[k], (a[k] + b[k]) / 2, atol=1e-6) for k in w)
        elif t["kind"] == "finetune":
            parent = weights(t["parents"][0])
            head_kept = w["head.weight"].shape == parent["head.weight"].shape
            assert head_kept == (t["task"] != "digits-0to4" or parent["head.weight"].shape[0] == 5)
            # fine-tuned, not retrained: nearer its parent than the parent is to another root
            d = (w["layers.0.weight"] - parent["layers.0.weight"]).norm()
            assert 0 < d < parent["layers.0.weight"].norm()
    model = load_model_dir(snapshot_dir(repo_dir(tree_zoo, truth[0]["id"].split("/")[1])))
    assert evaluate(model.model, get_task("digits10"), "test").accuracy > 0.5


def test_bad_trees_entries_are_one_line_errors(tmp_path):
    with pytest.raises(WeightAtlasError, match="FAMILY/TASK:ROOTS"):
        zoo("ci", tmp_path / "z", overrides={"trees": "mlp:3"}, progress=False)
    with pytest.raises(WeightAtlasError, match="cannot train"):
        zoo("ci", tmp_path / "z2", overrides={"trees": "cnn/wine:2"}, progress=False)


def test_a_timm_family_grows_trees_from_its_parent_checkpoints(tmp_path):
    # the tree builder is family-agnostic: a timm root, a fine-tune keeping its head, one with a
    # new 5-class head (timm's ``fc``) and an fp16 copy, each card declaring its base model
    over = {
        "families": "timm-resnet",
        "tasks": "digits10:1",
        "epochs": "1",
        "checkpoints": "1",
        "trees": "timm-resnet/digits10:1",
        "tree_tasks": "digits10,digits-0to4",
        "tree_epochs": "1",
        "tree_grandchildren": "0",
        "tree_merges": "0",
    }
    z = zoo("ci", tmp_path / "timm-trees", overrides=over, progress=False)
    truth = json.loads((z / "zoo.json").read_text())["trees"]
    assert sorted(t["kind"] for t in truth) == ["finetune", "finetune", "quantized", "root"]

    def snap(model_id: str) -> Path:
        return snapshot_dir(repo_dir(z, model_id.split("/")[1]))

    solo = next(r["id"] for r in read_zoo(z) if r["id"] not in {t["id"] for t in truth})
    other = safetensors.torch.load_file(snap(solo) / "model.safetensors")  # its own init

    for t in truth:
        card = metadata_load(snap(t["id"]) / "README.md")
        assert card["library_name"] == "timm" and card.get("base_model") == (
            t["parents"][0] if t["parents"] else None
        )
        if t["kind"] != "finetune":
            continue
        w = safetensors.torch.load_file(snap(t["id"]) / "model.safetensors")
        parent = safetensors.torch.load_file(snap(t["parents"][0]) / "model.safetensors")
        assert (w["fc.weight"].shape == parent["fc.weight"].shape) == (t["task"] == "digits10")
        # started from the parent: nearer it than to a run of the same shapes from its own init
        d = (w["conv1.weight"] - parent["conv1.weight"]).norm()
        assert 0 < d < 0.5 * (w["conv1.weight"] - other["conv1.weight"]).norm()
    model = load_model_dir(snap(truth[0]["id"]))
    assert model.library == "timm"


def test_trees_timm_preset_plans_the_trees_preset_for_timm_families():
    from core.config import build_config
    from core.zoos.trees import plan_trees

    nodes = plan_trees(build_config(ZooConfig, ZOO_PRESETS, "trees-timm"))
    assert {n.family for n in nodes} == {"timm-resnet", "timm-vit", "timm-convnext"}
    assert all(FAMILIES[n.family].library == "timm" for n in nodes)
    assert len(nodes) == 90 and sum(n.kind == "root" for n in nodes) == 9
    assert sum(n.planted is not None for n in nodes) == 6
