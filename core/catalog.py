"""Read-side helpers for the explorer: one table per atlas joining maps, embeddings and manifest.

The app never computes an embedding or a map on page load. Everything here reads what the
``embed`` stage already wrote (``ATLAS/embeddings/models.jsonl`` + ``maps.json``) and the
manifest, and turns it into flat columns the map can colour, filter and search by.

    table = map_table("assets/demo")      # MapTable: ids, coords per map kind, metadata columns
    keep = table.filter(family=["mlp"], task=[], tag=[], search="r0-e")
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atlas import (
    Atlas,
    AtlasError,
    BackboneFiles,
    EmbeddingTables,
    read_json,
    read_jsonl,
)
from core.embeddings.reader import embeddings_dir
from core.manifest import as_row
from core.trees.table import FLAGS as LINEAGE_FLAGS
from core.trees.table import LineageTable

# torch-backed readers (core.embeddings.encode, core.models.io, core.tokens) are imported where
# they are used: the app's Atlas page reads this module before its first paint, and importing
# torch there cost it 3-5 s (issue 27)

CATEGORICAL = ("family", "library", "task", "dataset", "split", "model_type")
NUMERIC = ("accuracy", "params", "copies")  # copies: 1 + duplicates of the point (issue 16)
COLOUR_BY = ("family", "library", "task", "dataset", "split", "accuracy", "params")


@dataclass
class MapTable:
    """Every embedded model of an atlas: 2-D coordinates per map kind and flat metadata.

    Attributes:
        ids: model ids in embedding-row order.
        coords: map kind (``umap``, ``pca``) -> ``(M, 2)`` float32 array aligned with ``ids``.
        columns: metadata column -> list aligned with ``ids`` (strings for categorical
            columns, floats with NaN for numeric ones).
        tags: per model, its tag list.
        base_model: per model, the ids it derives from (Hub lineage), possibly empty.
        explained: map kind -> explained variance ratio of its two axes (PCA; from
            ``embeddings/info.json``), where the atlas records it.
        records: per model, its manifest row (empty if the manifest lacks it).
        lineage: the atlas' recovered lineage rows by id (``core.trees.table``; empty when
            ``weightatlas lineage`` has not run); with it the table has a ``tree`` column.
        rows: per model, its row in the embedding tensors (``models.jsonl``'s ``row``), where
            every model row has one (the app then reads the embeddings without parsing
            ``models.jsonl`` again).
    """

    ids: list[str]
    coords: dict[str, np.ndarray]
    columns: dict[str, list[Any]]
    tags: list[list[str]]
    base_model: list[list[str]] = field(default_factory=list)
    hover: np.ndarray | None = None
    explained: dict[str, list[float]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)  # ATLAS/lineage rows by id
    rows: list[int] | None = None

    def hover_data(self) -> np.ndarray:
        """Per model ``[id, family, task, accuracy, params, split]`` as display strings ``(M, 6)``."""
        if self.hover is None:
            acc, params = self.columns["accuracy"], self.columns["params"]
            out = np.empty((len(self.ids), 6), dtype=object)
            for i, mid in enumerate(self.ids):
                a, p = acc[i], params[i]
                out[i] = (
                    mid,
                    self.columns["family"][i],
                    self.columns["task"][i],
                    "–" if a != a else f"{a:.3f}",
                    "–" if p != p else f"{int(p):,}",
                    self.columns["split"][i],
                )
            self.hover = out
        return self.hover

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """Model id -> row (built once)."""
        if getattr(self, "_index", None) is None or len(self._index) != len(self.ids):
            self._index = {m: i for i, m in enumerate(self.ids)}
        return self._index

    def values(self, name: str) -> list[str]:
        """Sorted distinct values of a categorical column (or of tags), computed once."""
        cache = self.__dict__.setdefault("_values", {})
        if name not in cache:
            if name == "tag":
                cache[name] = sorted({t for ts in self.tags for t in ts})
            else:
                cache[name] = sorted({str(v) for v in self.columns.get(name, [])})
        return list(cache[name])

    def filter(
        self,
        family: list[str] | None = None,
        task: list[str] | None = None,
        tag: list[str] | None = None,
        search: str = "",
    ) -> np.ndarray:
        """Boolean mask of models matching every non-empty criterion.

        Args:
            family: keep these families (empty: all).
            task: keep these tasks (empty: all).
            tag: keep models carrying at least one of these tags (empty: all).
            search: case-insensitive substring of the model id.
        """
        keep = np.ones(len(self.ids), dtype=bool)
        if family:
            keep &= np.isin(np.asarray(self.columns["family"], dtype=object), family)
        if task:
            keep &= np.isin(np.asarray(self.columns["task"], dtype=object), task)
        if tag:
            wanted = set(tag)
            keep &= np.array([bool(wanted.intersection(ts)) for ts in self.tags], dtype=bool)
        if search:
            s = search.lower()
            keep &= np.fromiter((s in i for i in self.lower_ids()), dtype=bool, count=len(self))
        return keep

    def lower_ids(self) -> list[str]:
        """The ids in lower case, for case-insensitive search (built once)."""
        if self.__dict__.get("_lower") is None or len(self._lower) != len(self.ids):
            self._lower = [m.lower() for m in self.ids]
        return self._lower

    def rows_of(self, model_ids: list[str]) -> np.ndarray:
        """Table rows of the ids that are on the map, in the given order (others skipped)."""
        index = self.index()
        return np.fromiter((i for i in map(index.get, model_ids) if i is not None), dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        """A metadata column as a numpy array (float for numeric columns, object otherwise),
        built once: the app indexes it with a selection's rows."""
        cache = self.__dict__.setdefault("_arrays", {})
        if name not in cache or len(cache[name]) != len(self.ids):
            dtype = float if name in NUMERIC else object
            cache[name] = np.asarray(self.columns[name], dtype=dtype)
        return cache[name]

    def recovered_edges(self) -> list[tuple[int, int, bool]]:
        """(parent row, child row, flagged) of the lineage recovered from the weights, where
        both ends are on the map; ``flagged``: the child's declaration is missing or
        contradicts the weights."""
        if self.__dict__.get("_recovered") is not None:
            return self._recovered
        index = self.index()
        self._recovered = [
            (index[p], index[m], r.get("status") in LINEAGE_FLAGS)
            for m, r in self.lineage.items()
            if m in index
            for p in _as_list(r.get("parent"))
            if p in index and index[p] != index[m]
        ]
        return self._recovered

    def lineage_edges(self) -> list[tuple[int, int]]:
        """(parent row, child row) pairs where both ends are on the map (computed once)."""
        if self.__dict__.get("_edges") is not None:
            return self._edges
        index = self.index()
        self._edges = [
            (index[p], i)
            for i, parents in enumerate(self.base_model)
            for p in parents
            if p in index and index[p] != i
        ]
        return self._edges


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def _accuracy(row: dict[str, Any]) -> float:
    """The row's test accuracy (``core.manifest.ModelRow.accuracy``), NaN if it has none."""
    value = as_row(row).accuracy
    return float("nan") if value is None else value


def model_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Flat metadata of one manifest row (the columns the map colours and filters by)."""
    labels = row.get("labels") or {}
    datasets = _as_list(row.get("datasets"))
    task = labels.get("task") or row.get("pipeline_tag") or ""
    params = row.get("params")
    return {
        "family": str(row.get("family") or "unknown"),
        "library": str(row.get("library") or "unknown"),
        "task": str(task or "unknown"),
        "dataset": datasets[0] if datasets else str(labels.get("dataset") or "unknown"),
        "split": str(row.get("split") or "unknown"),
        "model_type": str(row.get("model_type") or row.get("architecture") or "unknown"),
        "accuracy": _accuracy(row),
        "params": float(params) if isinstance(params, int | float) else float("nan"),
        "copies": float(row.get("copies") or 1),
    }


def _read_maps(path: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """maps.json as kind -> (M, 2), accepting ``{kind: {id: [x, y]}}`` or row-aligned lists."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise AtlasError(f"{path} is not a JSON object of maps")
    order = raw.get("ids") if isinstance(raw.get("ids"), list) else None
    out: dict[str, np.ndarray] = {}
    for kind, value in raw.items():
        if kind == "ids":
            continue
        if isinstance(value, dict) and "coords" in value and isinstance(value["coords"], list):
            value = value["coords"]
        if isinstance(value, dict):
            xy = np.full((len(ids), 2), np.nan, dtype=np.float32)
            for i, m in enumerate(ids):
                p = value.get(m)
                if isinstance(p, list | tuple) and len(p) >= 2:
                    xy[i] = p[:2]
        elif isinstance(value, list):
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) != len(order or ids):
                continue
            if order is not None and order != ids:
                pos = {m: j for j, m in enumerate(order)}
                xy = np.full((len(ids), 2), np.nan, dtype=np.float32)
                for i, m in enumerate(ids):
                    if m in pos:
                        xy[i] = arr[pos[m], :2]
            else:
                xy = arr[:, :2].copy()
        else:
            continue
        out[str(kind)] = xy
    return out


def map_table(root: str | Path) -> MapTable:
    """The map table of an embedded atlas.

    Raises:
        AtlasError: ``root`` is not an atlas, or it has no embeddings/maps yet (with the
            command that makes them).
    """
    atlas = Atlas.open(root)
    emb = atlas.embeddings
    step = next_stage(atlas.root)
    if step is not None:
        stage, command = step
        raise AtlasError(f"{atlas.root} has no map yet: the next stage is {stage}, `{command}`")
    rows = emb.models()
    ids = [str(r["id"]) for r in rows if "id" in r]
    manifest = {r["id"]: r for r in atlas.manifest()}
    coords = _read_maps(emb.maps_path, ids)
    if not coords:
        raise AtlasError(f"{emb.maps_path} holds no 2-D map for the embedded models")
    columns: dict[str, list[Any]] = {c: [] for c in (*CATEGORICAL, *NUMERIC)}
    tags, parents, records = [], [], []
    for r in rows:
        if "id" not in r:
            continue
        records.append(manifest.get(r["id"], {}))
        merged = {**r, **records[-1]}
        meta = model_meta(merged)
        for c in columns:
            columns[c].append(meta[c])
        tags.append(_as_list(merged.get("tags")))
        parents.append(_as_list(merged.get("base_model")))
    emb_rows = [r.get("row") for r in rows if "id" in r]
    table = MapTable(
        ids=ids,
        coords=coords,
        columns=columns,
        tags=tags,
        base_model=parents,
        records=records,
        rows=[int(r) for r in emb_rows] if all(isinstance(r, int) for r in emb_rows) else None,
    )
    lineage = LineageTable(atlas.root)
    if lineage.exists():
        table.lineage = lineage.by_id()
        table.columns["tree"] = [
            (r["tree"] if r.get("tree_size", 1) > 1 else "none")
            if (r := table.lineage.get(m))
            else "unknown"
            for m in ids
        ]
    info = emb.info()
    ratio = info.get("pca_explained_variance_ratio") if isinstance(info, dict) else None
    if isinstance(ratio, list) and all(isinstance(v, int | float) for v in ratio):
        table.explained["pca"] = [float(v) for v in ratio]
    table.hover_data()
    return table


def next_stage(root: str | Path) -> tuple[str, str] | None:
    """The next pipeline stage an atlas needs before it has a map, as ``(stage, command)``.

    ``collect`` (no accepted model), ``tokenize`` (no token store), ``train`` (no backbone),
    ``embed`` (no embeddings or maps); None once the atlas is embedded.
    """
    atlas = Atlas.open(root)
    where = atlas.root
    if not atlas.embeddings.exists():
        if not atlas.manifest_path.exists() or not atlas.accepted():
            return "collect", f"weightatlas collect {where} --source SOURCE"
        if not atlas.tokens.exists():
            return "tokenize", f"weightatlas tokenize {where}"
        if not atlas.backbone.weights_path.exists():
            return "train", f"weightatlas train {where} --preset ci"
        return "embed", f"weightatlas embed {where}"
    return None


def manifest_row(root: str | Path, model_id: str) -> dict[str, Any]:
    """The manifest row of ``model_id`` (empty if unknown)."""
    for row in Atlas.open(root).manifest():
        if row["id"] == model_id:
            return row
    return {}


def weights_dir(root: str | Path, model_id: str) -> Path | None:
    """The local snapshot directory of ``model_id`` if its weights are in the atlas."""
    atlas = Atlas.open(root)
    return as_row(manifest_row(atlas.root, model_id)).weights_dir(atlas.root)


def models_with_weights(root: str | Path) -> list[str]:
    """Accepted models whose weights are present (the Layers page can show these)."""
    atlas = Atlas.open(root)
    return sorted(r["id"] for r in atlas.accepted() if r.weights_dir(atlas.root) is not None)


def layer_rows_by_model(
    root: str | Path, backbone_dir: str | Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per-layer embedding rows (``name, layer, n_tokens, spread``) of every model, depth-ordered.

    Read from ``embeddings/layers.jsonl`` (or another backbone's embeddings): the spread is the
    std of the layer's token embeddings (003 eq. 8), written by ``weightatlas embed``.
    """
    atlas = Atlas.open(root)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in EmbeddingTables(embeddings_dir(atlas, backbone_dir)).layers():
        if "id" in r:
            out.setdefault(str(r["id"]), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: int(r.get("layer", 0)))
    return out


def layer_rows(
    root: str | Path, model_id: str, backbone_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """Per-layer embedding rows of one model (see :func:`layer_rows_by_model`)."""
    return layer_rows_by_model(root, backbone_dir).get(model_id, [])


def zoo_sizes(root: str | Path, family: str, task: str | None) -> list[tuple[int, int]]:
    """``(width, depth)`` of the atlas' tokenized zoo models of ``family`` on ``task``.

    Most common first, so a generation target built at that size finds prompts in the atlas.
    """
    tokenized = set(tokenized_ids(root))
    counts: dict[tuple[int, int], int] = {}
    for row in Atlas.open(root).accepted():
        labels = row.get("labels") or {}
        if row["id"] not in tokenized or labels.get("family") != family:
            continue
        if task is not None and labels.get("task") != task:
            continue
        if labels.get("width") is None or labels.get("depth") is None:
            continue
        size = (int(labels["width"]), int(labels["depth"]))
        counts[size] = counts.get(size, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))


def tokenized_ids(root: str | Path) -> list[str]:
    """Models present in the atlas' token store (their reconstructions can be shown)."""
    path = Atlas.open(root).tokens.index_path
    if not path.exists():
        return []
    return sorted((read_json(path).get("models") or {}).keys())


def model_state_dict(root: str | Path, model_id: str) -> dict[str, Any]:
    """The weights of ``model_id``: its safetensors files if kept, else detokenized from the store.

    Raises:
        AtlasError: the atlas holds neither the model's weights nor its tokens.
    """
    from core.models.io import read_state_dict
    from core.tokens.plan import detokenize
    from core.tokens.store import TokenStore

    atlas = Atlas.open(root)
    wdir = weights_dir(atlas.root, model_id)
    if wdir is not None:
        return read_state_dict(wdir)
    if model_id in set(tokenized_ids(atlas.root)):
        store = TokenStore(atlas.tokens_dir)
        return detokenize(store.get(model_id).tokens, store.layers(model_id))
    raise AtlasError(f"{model_id!r} has neither weights nor tokens in {atlas.root}")


def ablation_backbones(root: str | Path) -> dict[str, Path]:
    """Ablation backbones of the atlas (``ATLAS/backbones/NAME/`` with weights), by name."""
    base = Atlas.open(root).root / "backbones"
    if not base.is_dir():
        return {}
    return {d.name: d for d in sorted(base.iterdir()) if d.is_dir() and BackboneFiles(d).exists()}


def zip_dir(path: str | Path) -> bytes:
    """A directory as zip bytes (for downloads); symlinks are not followed."""
    path = Path(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file() and not f.is_symlink():
                zf.write(f, f.relative_to(path.parent))
    return buf.getvalue()


def backbone_validation(backbone_dir: str | Path) -> dict[str, Any]:
    """The last validation row of a backbone's ``metrics.jsonl`` (empty if none).

    Scalars (``val_r2``, ``val_models``, ...) and per-kind tables (``val_r2_by_kind`` and any
    other ``val_*_by_kind``) as the training stage wrote them.
    """
    path = BackboneFiles(Path(backbone_dir)).metrics_path
    if not path.exists():
        return {}
    last: dict[str, Any] = {}
    for row in read_jsonl(path):
        if any(k.startswith("val_") for k in row):
            last = row
    return last


def backbone_budget(backbone_dir: str | Path) -> dict[str, Any]:
    """What a backbone was trained with, from its ``config.json``: preset, steps, model width,
    latent size, loss normalisation and the number of training models (missing keys omitted)."""
    path = BackboneFiles(Path(backbone_dir)).config_path
    try:
        cfg = read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    net = cfg.get("backbone") if isinstance(cfg.get("backbone"), dict) else {}
    out = {
        "preset": cfg.get("preset"),
        "steps": train.get("steps"),
        "d_model": net.get("d_model"),
        "latent_dim": net.get("latent_dim"),
        "loss_norm": train.get("loss_norm"),
        "train_models": cfg.get("n_train_models"),
    }
    return {k: v for k, v in out.items() if v is not None}
