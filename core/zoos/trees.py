"""Model trees in the zoo: roots trained from scratch, fine-tunes, merges and precision copies.

The Hugging Face Hub is mostly fine-tunes of a few base models ("model trees"). A zoo with
``trees`` entries (``FAMILY/TASK:ROOTS``) grows, per family, ``ROOTS`` roots of one fixed
architecture trained from scratch on ``TASK``, and under each root:

- one fine-tune per ``tree_tasks`` entry that fits the root's inputs (another task or class
  subset; the head is replaced when the number of classes changes, every other tensor starts
  from the parent), with its own lr, weight decay, epochs and shuffling seed;
- ``tree_grandchildren`` fine-tunes of those children (depth 2);
- ``tree_merges`` merges: the plain weight average of two siblings with the same head;
- ``tree_precision_copies`` copies of a child cast to one of ``tree_dtypes`` (fp16 / bf16).

Every card declares ``base_model`` and ``base_model_relation`` (``finetune``, ``merge``,
``quantized``) as the Hub does, except ``tree_wrong`` seeded fine-tunes that declare another
tree's model and ``tree_undeclared`` ones that declare nothing. The true lineage, and which
declarations were planted, is kept only in ``zoo.json`` (``trees``), never in a card.

Node names (``{family}-{task}-n{k}``) do not give the parent away: ``k`` is a seeded
permutation of the nodes of the family.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.errors import WeightAtlasError
from core.models.families import FAMILIES, build_family
from core.models.io import read_state_dict
from core.zoos.tasks import get_task, train_epochs

if TYPE_CHECKING:
    from core.zoos.zoo import Run, ZooConfig

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
RELATIONS = ("finetune", "merge", "quantized")
TREE_RUN_BASE = 1000  # tree nodes get run numbers from here: one run key per node


@dataclass
class TreeNode:
    """One model of a tree and how it is made.

    ``kind``: ``root`` (trained from scratch), ``finetune``, ``merge`` (average of
    ``parents``) or ``quantized`` (``parents[0]`` cast to ``dtype``). ``declared`` is what
    its card says (``None``: no ``base_model``); ``planted`` marks a deliberately wrong
    (``wrong``) or absent (``undeclared``) declaration.
    """

    name: str
    family: str
    task: str
    kind: str
    tree: int
    parents: list[str]
    run: int
    seed: int
    lr: float
    weight_decay: float
    epochs: int
    width: int
    depth: int
    dtype: str = "float32"
    declared: list[str] | None = None
    planted: str | None = None
    children: list[str] = field(default_factory=list)

    @property
    def relation(self) -> str | None:
        """The Hub's ``base_model_relation`` of the true parent(s); ``None`` for a root."""
        return None if self.kind == "root" else self.kind

    def truth(self) -> dict[str, Any]:
        """The ground-truth row kept in ``zoo.json``."""
        return {
            "id": f"weightatlas-zoo/{self.name}",
            "family": self.family,
            "task": self.task,
            "tree": f"{self.family}/t{self.tree}",
            "kind": self.kind,
            "parents": [f"weightatlas-zoo/{p}" for p in self.parents],
            "relation": self.relation,
            "declared": None
            if self.declared is None
            else [f"weightatlas-zoo/{p}" for p in self.declared],
            "planted": self.planted,
            "dtype": self.dtype,
        }


def parse_tree(entry: str) -> tuple[str, str, int]:
    """``FAMILY/TASK:ROOTS`` -> (family, root task, roots); a bad entry is a one-line error."""
    spec, _, roots = entry.partition(":")
    family, _, task = spec.partition("/")
    try:
        n = int(roots)
    except ValueError:
        n = -1
    if not family or not task or n < 1:
        raise WeightAtlasError(
            f"bad trees entry {entry!r}; expected FAMILY/TASK:ROOTS (ROOTS >= 1)"
        )
    if family not in FAMILIES:
        raise WeightAtlasError(f"unknown zoo family {family!r}; choose from {', '.join(FAMILIES)}")
    if get_task(task).info.kind not in FAMILIES[family].kinds:
        raise WeightAtlasError(f"trees {entry!r}: family {family!r} cannot train on {task!r}")
    return family, task, n


def _fits(root_task: str, task: str) -> bool:
    a, b = get_task(root_task).info, get_task(task).info
    return a.kind == b.kind and a.input_shape == b.input_shape and a.vocab_size == b.vocab_size


def plan_trees(cfg: ZooConfig) -> list[TreeNode]:
    """Every tree node of ``cfg`` in build order (each node after its parents)."""
    for d in cfg.tree_dtypes:
        if d not in DTYPES:
            raise WeightAtlasError(f"unknown tree dtype {d!r}; choose from {', '.join(DTYPES)}")
    nodes: list[TreeNode] = []
    for entry in cfg.trees:
        family, root_task, n_roots = parse_tree(entry)
        fam = FAMILIES[family]
        tasks = [t for t in cfg.tree_tasks if _fits(root_task, t)]
        if not tasks:
            raise WeightAtlasError(f"trees {entry!r}: no tree_tasks entry fits {root_task!r}")
        rng = np.random.default_rng([cfg.seed, zlib.crc32(f"trees/{entry}".encode())])
        width, depth = fam.widths[0], fam.depths[0]
        fam_nodes: list[TreeNode] = []

        # node(kind, task, tree, parents, epochs), drawing from this family's generator
        node = partial(_new_node, fam_nodes, rng, cfg, family, (width, depth))
        for t in range(n_roots):
            root = node("root", root_task, t, [], cfg.epochs)
            children = [
                node("finetune", task, t, [id(root)], int(rng.choice(cfg.tree_epochs)))
                for task in tasks
            ]
            picks = rng.permutation(len(children))[: cfg.tree_grandchildren]
            for i in picks:
                parent = children[int(i)]
                other = [x for x in tasks if x != parent.task] or tasks
                task = str(other[int(rng.integers(len(other)))])
                node("finetune", task, t, [id(parent)], int(rng.choice(cfg.tree_epochs)))
            heads: dict[int, list[TreeNode]] = {}
            for c in children:
                heads.setdefault(get_task(c.task).info.num_classes, []).append(c)
            pairs = [g for g in heads.values() if len(g) >= 2]
            for m in range(min(cfg.tree_merges, len(pairs))):
                a, b = pairs[m][:2]
                merged = node("merge", a.task, t, [id(a), id(b)], 0)
                merged.lr = merged.weight_decay = 0.0
            for q in range(cfg.tree_precision_copies):
                src = children[int(rng.integers(len(children)))]
                copy = node("quantized", src.task, t, [id(src)], 0)
                copy.lr = copy.weight_decay = 0.0
                copy.dtype = cfg.tree_dtypes[(t + q) % len(cfg.tree_dtypes)]
        # names: a seeded permutation, so a name does not give its place in the tree away
        order = rng.permutation(len(fam_nodes))
        by_id = {}
        for k, n in zip(order, fam_nodes):
            n.name = f"{family}-{n.task}-n{int(k):03d}"
            by_id[id(n)] = n
        for n in fam_nodes:
            n.parents = [by_id[p].name for p in n.parents]
        nodes += fam_nodes
    names = [n.name for n in nodes]
    for i, n in enumerate(nodes):
        n.run = TREE_RUN_BASE + i
        n.declared = list(n.parents) or None
    by_name = dict(zip(names, nodes))
    for n in nodes:
        for p in n.parents:
            by_name[p].children.append(n.name)
    _plant(cfg, nodes)
    return nodes


def _new_node(
    into: list[TreeNode],
    rng: np.random.Generator,
    cfg: ZooConfig,
    family: str,
    size: tuple[int, int],
    kind: str,
    task: str,
    tree: int,
    parents: list[int],
    epochs: int,
) -> TreeNode:
    """A node with its seeded hyper-parameters (parents as ``id()`` until named), appended to
    ``into``."""
    fam = FAMILIES[family]
    lrs = cfg.lrs if kind == "root" else cfg.tree_lrs
    n = TreeNode(
        name="",
        family=family,
        task=task,
        kind=kind,
        tree=tree,
        parents=parents,
        run=0,
        seed=int(rng.integers(0, 2**31 - 1)),
        lr=float(rng.choice(lrs)) * fam.lr_scale,
        weight_decay=float(rng.choice(cfg.weight_decays)),
        epochs=epochs * fam.epoch_scale,
        width=size[0],
        depth=size[1],
    )
    into.append(n)
    return n


def _plant(cfg: ZooConfig, nodes: list[TreeNode]) -> None:
    """Mark ``tree_wrong`` fine-tunes as declaring another tree's model of their family and
    ``tree_undeclared`` as declaring nothing (seeded; never the same node twice)."""
    rng = np.random.default_rng([cfg.seed, zlib.crc32(b"trees/planted")])
    fine = [n for n in nodes if n.kind == "finetune"]
    want = cfg.tree_wrong + cfg.tree_undeclared
    if want > len(fine):
        raise WeightAtlasError(f"tree_wrong + tree_undeclared = {want} > {len(fine)} fine-tunes")
    picks = [fine[int(i)] for i in rng.permutation(len(fine))[:want]]
    for k, n in enumerate(picks):
        if k < cfg.tree_wrong:
            others = [
                m
                for m in nodes
                if m.family == n.family and m.tree != n.tree and m.kind in ("root", "finetune")
            ]
            if not others:
                raise WeightAtlasError(f"a wrong declaration needs 2 trees of {n.family!r}")
            n.declared = [others[int(rng.integers(len(others)))].name]
            n.planted = "wrong"
        else:
            n.declared = None
            n.planted = "undeclared"


def node_run(node: TreeNode) -> Run:
    """The zoo ``Run`` a tree node is labelled with (its own run number; no ``zoo`` label)."""
    from core.zoos.zoo import Run

    return Run(
        family=node.family,
        task=node.task,
        run=node.run,
        seed=node.seed,
        lr=node.lr,
        weight_decay=node.weight_decay,
        width=node.width,
        depth=node.depth,
        epochs=node.epochs,
        checkpoints=(node.epochs,),
    )


def fresh_model(node: TreeNode) -> torch.nn.Module:
    """A random init of the node's architecture for its task (head sized for the task)."""
    return build_family(node.family, get_task(node.task).info, node.width, node.depth, node.seed)


def grow(
    node: TreeNode, parent_weights: Callable[[str], dict[str, torch.Tensor]]
) -> torch.nn.Module:
    """Make one node's model: train a root, fine-tune a child from its parent, average the
    parents of a merge or cast a precision copy (then back to float32 for evaluation).

    Args:
        node: the node.
        parent_weights: name -> state dict of an already written node.
    """
    model = fresh_model(node)
    if node.kind == "root":
        train_epochs(model, node.task, node.epochs, node.lr, node.weight_decay, 32, node.seed)
        return model
    own = model.state_dict()
    states = [parent_weights(p) for p in node.parents]
    if node.kind == "finetune":
        # every tensor of the parent that fits starts the child; a new head stays fresh
        start = {
            k: v.float() if v.is_floating_point() else v
            for k, v in states[0].items()
            if k in own and own[k].shape == v.shape
        }
        model.load_state_dict(start, strict=False)
        train_epochs(model, node.task, node.epochs, node.lr, node.weight_decay, 32, node.seed)
        return model
    if node.kind == "merge":
        merged = {}
        for k, v in states[0].items():
            if v.is_floating_point():
                merged[k] = sum(s[k].float() for s in states) / len(states)
            else:
                merged[k] = v
        model.load_state_dict(merged, strict=False)
        return model
    if node.kind == "quantized":
        cast = {
            k: v.to(DTYPES[node.dtype]).float() if v.is_floating_point() else v
            for k, v in states[0].items()
        }
        model.load_state_dict(cast, strict=False)
        return model
    raise WeightAtlasError(f"unknown tree node kind {node.kind!r}")


def stored_model(model: torch.nn.Module, node: TreeNode) -> torch.nn.Module:
    """The model as its repo stores it: cast to the node's dtype for a precision copy."""
    return model.to(DTYPES[node.dtype]) if node.dtype in DTYPES else model


def read_weights(snapshot: Path) -> dict[str, torch.Tensor]:
    """The state dict of a written node (float tensors as float32)."""
    return {
        k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(snapshot).items()
    }
