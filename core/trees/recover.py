"""Recover model trees from weight fingerprints: the project's method and MoTHer's baseline.

Both start from the same bounded pairwise pass (:func:`pairwise`): every pair of models that
shares weight tensors is compared on the fixed sample of each shared tensor. A cheap pass on a
sub-sample finds candidate clusters (connected models); the full sample is then compared only
inside them, so the work is one fingerprint per model plus small within-cluster matrices.

Per tensor ``t`` the relative distance of models ``a`` and ``b`` is
``r_t = |a_t - b_t| / sqrt(|a_t|^2 + |b_t|^2)``: ~1 for independent inits (zero-mean weights
are nearly orthogonal), 0 for identical tensors, whatever the tensor's scale.

**Ours** (``method="deltas"``): the distance of a pair is the median ``r_t`` over the tensors
they share (a re-learned head or one heavily changed layer does not decide it); models are
linked when it and the global distance are both below ``threshold``, and a tree is a connected
group. A pair is compared only when its shared tensors hold ``MIN_SHARED`` of the smaller
model's sampled values. Inside a tree (parents chosen by
the global distance below), precision copies
(distance ~0, stored below 32 bits beside a 32-bit twin) and merges (a model on the segment
between two others, to ``merge_tol`` of their distance) are found first and attached to their
sources. The rest are ordered by age: a fine-tune adds a delta nearly orthogonal to its
parent's weights, so its per-tensor norms grow (``|p + d|^2 = |p|^2 + |d|^2`` for ``d ⟂ p``),
and a model's age is the share of (model, tensor) comparisons in which its norm is the larger.
The root is the younger of the two most central models (least summed distance); every other
model takes its parent among the younger models within ``tie_band`` of its nearest one:

- first the shallowest of them in the tree built so far (the age order is only a rough guide:
  weight decay shrinks some fine-tunes' norms, so a sibling can look younger than the root);
- then it descends along a recovered edge ``a -> q`` while the model ``c`` *continues* ``q``'s
  own delta: ``t = (c - a).(q - a) / |q - a|^2 >= descend_t`` and
  ``cos(c - a, q - a) >= descend_cos`` (a child of ``q`` holds all of ``q``'s delta, ``t ~ 1``;
  a sibling's delta is nearly orthogonal to ``q``'s, ``t, cos ~ 0``, but ``t`` alone grows
  without bound beside a sibling that barely moved, hence the cosine too). The thresholds are
  the midpoints 0.5 and 0.5, checked on the seed-0 trees zoo only (docs/lineage.md).

**MoTHer** (Horwitz et al., ICLR 2025; ``method="mother"``), as we read the paper: the L2
distance over all shared weights (one global ratio), the same linking threshold, and inside a
tree the minimum directed spanning tree (Chu-Liu/Edmonds, networkx) of
``cost(p -> c) = distance + lambda * [kurtosis moves the wrong way]``, with ``lambda`` the
tree's median distance and the way (kurtosis grows or falls down the tree) chosen per tree as
the one giving the cheaper tree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from core.trees.fingerprints import Fingerprint

Key = tuple[str, tuple[int, ...]]
COARSE_VALUES = 64  # values per tensor in the candidate pass
MIN_SHARED = 0.5  # share of the smaller model's sampled values a compared pair must share


@dataclass
class Pairs:
    """Within-cluster pairwise statistics of ``members`` (indices into the model list).

    ``own``: median per-tensor relative distance; ``glob``: global relative L2 distance;
    ``grow[i, j]``: fraction of shared tensors whose norm is larger in ``j`` than in ``i``;
    ``kurt[i, j]``: mean kurtosis of ``j`` minus ``i`` over shared tensors; ``shared``:
    number of shared tensors (0: never compared, distances are inf).
    """

    members: list[int]
    own: np.ndarray
    glob: np.ndarray
    grow: np.ndarray
    kurt: np.ndarray
    shared: np.ndarray


@dataclass
class Recovered:
    """Recovered lineage of every model (aligned with the input list).

    ``tree[i]``: tree number; ``parents[i]``: parent indices (two for a merge, none for a
    root); ``relation[i]``: ``finetune`` / ``merge`` / ``quantized`` / None; ``distance[i]``:
    distance to the (first) parent; ``confidence[i]`` in [0, 1].
    """

    tree: list[int]
    parents: list[list[int]]
    relation: list[str | None]
    distance: list[float]
    confidence: list[float]
    pairs_compared: int = 0
    details: dict[str, float] = field(default_factory=dict)


def _keys(fps: Sequence[Fingerprint]) -> dict[Key, list[int]]:
    holders: dict[Key, list[int]] = {}
    for i, fp in enumerate(fps):
        for key in fp.samples:
            holders.setdefault(key, []).append(i)
    return holders


def _rel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared pairwise distances and squared-norm sums of the rows of ``x`` (float64)."""
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    return d2, sq[:, None] + sq[None, :]


def candidates(fps: Sequence[Fingerprint], threshold: float) -> tuple[np.ndarray, int]:
    """Candidate clusters from a sub-sample of each shared tensor (mean relative distance).

    Returns:
        The candidate label of each model and the number of pairs compared.
    """
    n = len(fps)
    total = np.zeros((n, n), dtype=np.float32)
    count = np.zeros((n, n), dtype=np.float32)
    values = np.zeros((n, n), dtype=np.float32)
    own_values = np.array([sum(v.size for v in f.samples.values()) for f in fps], dtype=float)
    for key, idx in _keys(fps).items():
        if len(idx) < 2:
            continue
        x = np.stack([fps[i].samples[key] for i in idx])
        values[np.ix_(idx, idx)] += x.shape[1]
        x = x[:, :: max(1, x.shape[1] // COARSE_VALUES)]
        d2, s2 = _rel(x)
        r = np.sqrt(d2 / np.maximum(s2, 1e-30)).astype(np.float32)
        ix = np.ix_(idx, idx)
        total[ix] += r
        count[ix] += 1
    enough = values >= MIN_SHARED * np.minimum(own_values[:, None], own_values[None, :])
    link = (count > 0) & enough & (total < threshold * count)
    np.fill_diagonal(link, False)
    pairs = int(((count > 0).sum() - n) // 2)
    _, labels = connected_components(csr_matrix(link), directed=False)
    return labels, pairs


def pairwise(fps: Sequence[Fingerprint], members: list[int]) -> Pairs:
    """Full-sample statistics of every pair inside one candidate cluster."""
    m = len(members)
    local = [fps[i] for i in members]
    holders = _keys(local)
    per_tensor: list[np.ndarray] = []
    d2_sum = np.zeros((m, m))
    s2_sum = np.zeros((m, m))
    grow_sum = np.zeros((m, m))
    kurt_sum = np.zeros((m, m))
    shared = np.zeros((m, m))
    values = np.zeros((m, m))  # sampled values the pair shares
    own_values = np.array([sum(v.size for v in f.samples.values()) for f in local], dtype=float)
    for key, idx in holders.items():
        if len(idx) < 2:
            continue
        x = np.stack([local[i].samples[key] for i in idx])
        d2, s2 = _rel(x)
        r = np.full((m, m), np.nan)
        ix = np.ix_(idx, idx)
        r[ix] = np.sqrt(d2 / np.maximum(s2, 1e-30))
        per_tensor.append(r)
        d2_sum[ix] += d2
        s2_sum[ix] += s2
        norms = np.array([local[i].norms[key] for i in idx])
        kurt = np.array([local[i].kurtosis[key] for i in idx])
        grow_sum[ix] += norms[None, :] > norms[:, None]
        kurt_sum[ix] += kurt[None, :] - kurt[:, None]
        shared[ix] += 1
        values[ix] += x.shape[1]
    # a pair compares only when what it shares is most of the smaller model: two models of
    # different sizes may share nothing but a few tiny tables
    enough = values >= MIN_SHARED * np.minimum(own_values[:, None], own_values[None, :])
    shared[~enough] = 0
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pairs sharing no tensor: all NaN
        own = np.nanmedian(np.stack(per_tensor), axis=0) if per_tensor else np.full((m, m), np.nan)
        glob = np.sqrt(d2_sum / np.maximum(s2_sum, 1e-30))
        grow = grow_sum / np.maximum(shared, 1)
        kurt = kurt_sum / np.maximum(shared, 1)
    own[shared == 0] = np.inf
    glob[shared == 0] = np.inf
    np.fill_diagonal(own, 0.0)
    np.fill_diagonal(glob, 0.0)
    return Pairs(members, own, glob, grow, kurt, shared)


def _components(dist: np.ndarray, threshold: float) -> list[list[int]]:
    link = np.isfinite(dist) & (dist < threshold)
    np.fill_diagonal(link, False)
    k, labels = connected_components(csr_matrix(link), directed=False)
    return [list(np.flatnonzero(labels == c)) for c in range(k)]


def _merge_parents(
    fps: Sequence[Fingerprint], members: list[int], dist: np.ndarray, tol: float, near: int = 6
) -> dict[int, tuple[int, int, float]]:
    """Local index -> (a, b, residual) for models that lie on the segment between two others.

    The model ``m`` is compared with ``alpha * a + (1 - alpha) * b`` on the tensors all three
    share (``alpha`` fitted, in [0.1, 0.9]); ``residual`` is the distance left over relative to
    ``|a - b|``. Only pairs among ``m``'s ``near`` nearest models are tried.
    """
    out: dict[int, tuple[int, int, float]] = {}
    m = len(members)
    for i in range(m):
        order = [j for j in np.argsort(dist[i]) if j != i and np.isfinite(dist[i, j])][:near]
        best: tuple[int, int, float] | None = None
        for x, a in enumerate(order):
            for b in order[x + 1 :]:
                if not (dist[i, a] < dist[a, b] and dist[i, b] < dist[a, b]):
                    continue
                fa, fb, fm = (fps[members[j]] for j in (a, b, i))
                keys = [k for k in fm.samples if k in fa.samples and k in fb.samples]
                if not keys:
                    continue
                va = np.concatenate([fa.samples[k] for k in keys]).astype(np.float64)
                vb = np.concatenate([fb.samples[k] for k in keys]).astype(np.float64)
                vm = np.concatenate([fm.samples[k] for k in keys]).astype(np.float64)
                ab = va - vb
                span = float(ab @ ab)
                if span <= 0:
                    continue
                alpha = float(np.clip((vm - vb) @ ab / span, 0.1, 0.9))
                res = float(np.linalg.norm(vm - (alpha * va + (1 - alpha) * vb))) / np.sqrt(span)
                if res < tol and (best is None or res < best[2]):
                    best = (a, b, res)
        if best is not None:
            out[i] = best
    return out


def continues(a: Fingerprint, q: Fingerprint, c: Fingerprint) -> tuple[float, float]:
    """How far ``c`` continues ``q``'s delta from ``a``, on the tensors all three share.

    Returns:
        ``t = (c - a).(q - a) / |q - a|^2`` (1 for a child of ``q`` whose own delta is
        orthogonal, ~0 for a sibling of ``q``) and ``cos(c - a, q - a)``; (0, 0) when the three
        share nothing or ``q == a``.
    """
    keys = [k for k in c.samples if k in a.samples and k in q.samples]
    if not keys:
        return 0.0, 0.0
    va = np.concatenate([a.samples[k] for k in keys]).astype(np.float64)
    dq = np.concatenate([q.samples[k] for k in keys]).astype(np.float64) - va
    dc = np.concatenate([c.samples[k] for k in keys]).astype(np.float64) - va
    qq, cc = float(dq @ dq), float(dc @ dc)
    if qq <= 0 or cc <= 0:
        return 0.0, 0.0
    dot = float(dq @ dc)
    return dot / qq, dot / float(np.sqrt(qq * cc))


def _pick_parent(
    fp: Sequence[Fingerprint],
    sub: np.ndarray,
    c: int,
    earlier: list[int],
    parent: dict[int, int | None],
    depth: dict[int, int],
    rule: tuple[float, float, float],
) -> int:
    """Model ``c``'s parent among ``earlier`` (indices into ``sub`` / ``fp``): the shallowest
    model within the tie band of the nearest, then down the recovered edges ``c`` continues
    (module docstring). ``rule`` is ``(tie_band, descend_t, descend_cos)``."""
    tie_band, min_t, min_cos = rule
    best = min(sub[q, c] for q in earlier)
    band = [q for q in earlier if sub[q, c] <= best * (1 + tie_band)]
    p = min(band, key=lambda q: (depth[q], sub[q, c]))
    while True:
        for q in sorted((q for q in band if parent[q] == p), key=lambda q: sub[q, c]):
            t, cos = continues(fp[p], fp[q], fp[c])
            if t >= min_t and cos >= min_cos:
                p = q
                break
        else:
            return p


def _own_tree(
    fps: Sequence[Fingerprint],
    pairs: Pairs,
    local: list[int],
    quant_tol: float,
    merge_tol: float,
    rule: tuple[float, float, float],
) -> dict[int, tuple[list[int], str | None, float, float]]:
    """Lineage inside one tree by our method: local index -> (parents, relation, distance,
    confidence), local indices referring to ``pairs.members``."""
    # membership by the robust per-tensor median; parents by the global distance, which weighs
    # every sampled value alike (chosen on the seed-0 trees zoo: docs/lineage.md)
    d = pairs.glob[np.ix_(local, local)]
    grow = pairs.grow[np.ix_(local, local)]
    fp = [fps[pairs.members[i]] for i in local]
    n = len(local)
    out: dict[int, tuple[list[int], str | None, float, float]] = {}
    # precision copies: a low-precision model at ~0 distance from a full-precision one
    for j in range(n):
        if not fp[j].low_precision:
            continue
        src = [i for i in range(n) if i != j and not fp[i].low_precision and d[i, j] < quant_tol]
        if src:
            i = min(src, key=lambda s: d[s, j])
            out[j] = ([i], "quantized", float(d[i, j]), float(1 - d[i, j] / quant_tol))
    rest = [i for i in range(n) if i not in out]
    merges = _merge_parents(
        fps, [pairs.members[local[i]] for i in rest], d[np.ix_(rest, rest)], merge_tol
    )
    for mi, (a, b, res) in merges.items():
        i, pa, pb = rest[mi], rest[a], rest[b]
        out[i] = ([pa, pb], "merge", float(min(d[i, pa], d[i, pb])), float(1 - res / merge_tol))
    core = [i for i in rest if i not in out]
    sub = d[np.ix_(core, core)]
    g = grow[np.ix_(core, core)]
    # age: how often a model's tensors are larger than the other models' (a root is youngest)
    age = g.sum(0) / max(len(core) - 1, 1)
    # the root: the younger of the two most central models (least summed distance to the
    # tree; a barely moved fine-tune is as central as its parent); every other model's parent
    # is an earlier (younger) one
    finite = np.where(np.isfinite(sub), sub, np.nanmax(sub[np.isfinite(sub)], initial=1.0))
    central = np.argsort(finite.sum(1), kind="stable")[:2]
    root = int(min(central, key=lambda i: (age[i], i)))
    order = [root] + sorted((i for i in range(len(core)) if i != root), key=lambda i: (age[i], i))
    cf = [fp[i] for i in core]
    parent: dict[int, int | None] = {}
    depth: dict[int, int] = {}
    for rank, c in enumerate(order):
        earlier = [q for q in order[:rank] if np.isfinite(sub[q, c])]
        if not earlier:
            parent[c], depth[c] = None, 0
            out[core[c]] = ([], None, 0.0, 1.0)
            continue
        p = _pick_parent(cf, sub, c, earlier, parent, depth, rule)
        parent[c], depth[c] = p, depth[p] + 1
        d1 = sub[p, c]
        others = [sub[q, c] for q in range(len(core)) if q not in (p, c)]
        d2 = min(others) if others else 2 * d1 + 1e-12
        margin = float(np.clip((d2 - d1) / max(d2, 1e-12) + 0.5, 0.0, 1.0))
        direction = float(g[p, c])
        out[core[c]] = ([core[p]], "finetune", float(d1), round(margin * direction, 4))
    return out


def _mother_tree(pairs: Pairs, local: list[int]) -> dict[int, tuple[list[int], float]]:
    """MoTHer inside one tree: local index -> (parents, distance)."""
    d = pairs.glob[np.ix_(local, local)]
    kurt = pairs.kurt[np.ix_(local, local)]
    n = len(local)
    if n == 1:
        return {0: ([], 0.0)}
    finite = d[np.isfinite(d) & (d > 0)]
    lam = float(np.median(finite)) if len(finite) else 1.0
    best: tuple[float, nx.DiGraph] | None = None
    for sign in (1.0, -1.0):  # kurtosis grows (1) or falls (-1) from parent to child
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        for p in range(n):
            for c in range(n):
                if p != c and np.isfinite(d[p, c]):
                    wrong = sign * kurt[p, c] < 0
                    g.add_edge(p, c, weight=float(d[p, c] + lam * wrong))
        try:
            arb = nx.minimum_spanning_arborescence(g, attr="weight")
        except nx.NetworkXException:
            continue
        cost = float(sum(w for _, _, w in arb.edges(data="weight")))
        if best is None or cost < best[0]:
            best = (cost, arb)
    out: dict[int, tuple[list[int], float]] = {i: ([], 0.0) for i in range(n)}
    if best is not None:
        for p, c in best[1].edges():
            out[c] = ([p], float(d[p, c]))
    return out


def recover(
    fps: Sequence[Fingerprint],
    method: str = "deltas",
    threshold: float = 0.7,
    quant_tol: float = 0.02,
    merge_tol: float = 0.05,
    tie_band: float = 0.25,
    descend_t: float = 0.5,
    descend_cos: float = 0.5,
) -> Recovered:
    """Trees, parents, relations and confidences of ``fps`` by ``method`` (``deltas`` or
    ``mother``); see the module docstring."""
    if method not in ("deltas", "mother"):
        raise ValueError(f"unknown lineage method {method!r}; choose deltas or mother")
    n = len(fps)
    labels, compared = candidates(fps, max(threshold, 0.8))
    rec = Recovered([-1] * n, [[] for _ in range(n)], [None] * n, [0.0] * n, [1.0] * n)
    rec.pairs_compared = compared
    tree = 0
    for c in range(int(labels.max()) + 1 if n else 0):
        members = [int(i) for i in np.flatnonzero(labels == c)]
        pairs = pairwise(fps, members) if len(members) > 1 else None
        if pairs is None:
            rec.tree[members[0]] = tree
            tree += 1
            continue
        # ours links on both distances: the median alone is fooled by tensors that start from
        # zeros in every model (a Swin position-bias table) and drift alike on similar tasks
        dist = np.maximum(pairs.own, pairs.glob) if method == "deltas" else pairs.glob
        for local in _components(dist, threshold):
            for i in local:
                rec.tree[members[i]] = tree
            tree += 1
            if method == "deltas":
                rule = (tie_band, descend_t, descend_cos)
                found = _own_tree(fps, pairs, local, quant_tol, merge_tol, rule)
                for li, (parents, relation, dd, conf) in found.items():
                    g = members[local[li]]
                    rec.parents[g] = [members[local[p]] for p in parents]
                    rec.relation[g] = relation
                    rec.distance[g] = dd
                    rec.confidence[g] = conf
            else:
                for li, (parents, dd) in _mother_tree(pairs, local).items():
                    g = members[local[li]]
                    rec.parents[g] = [members[local[p]] for p in parents]
                    rec.relation[g] = "finetune" if parents else None
                    rec.distance[g] = dd
                    rec.confidence[g] = float("nan")
    return rec
