"""The atlas directory: its layout, and atomic, resumable file I/O shared by every stage.

    ATLAS/atlas.json  manifest.jsonl  hub/  tokens/  backbone/  embeddings/  results/  generated/

Writes are atomic (temp file + fsync + rename), JSONL tables are append-only with one fsync'd
line per record, and a torn last line (a killed writer) is ignored on read, so every stage can
be killed and resumed without losing what it had finished.

The stage folders are typed tables (``TokenTable``, ``BackboneFiles``, ``EmbeddingTables``, at
the end of this module; the manifest is ``core.manifest``): they alone spell their file names,
``Atlas.tokens`` / ``.backbone`` / ``.embeddings`` give them for an atlas, each with
``exists()`` and a ``stamp()`` for cache keys. ``GeneratedCard`` is a generated model's card
(``generated/NAME/README.md``), the one reader and writer of it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_FILE, ModelRow, in_id_order, latest_rows

ATLAS_VERSION = 1
INFO_FILE = "atlas.json"
# how deep under the atlas root ``Atlas.check_links`` looks for symlinks: the tables at the top,
# the stage folders' files, and one folder inside them (``results/figures``, ``backbones/NAME``)
_LINK_CHECK_DEPTH = 2


class AtlasError(ValueError):
    """A path that is not a usable atlas directory, or a missing stage output."""


@dataclass(frozen=True)
class Atlas:
    """Paths inside one atlas directory."""

    root: Path

    @classmethod
    def create(cls, root: str | Path) -> Atlas:
        """Open ``root`` as an atlas, creating it if needed."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise AtlasError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        atlas = cls(root)
        atlas.check_links()
        if not atlas.info_path.exists():
            write_json(atlas.info_path, {"version": ATLAS_VERSION})
        return atlas

    @classmethod
    def open(cls, root: str | Path) -> Atlas:
        """Open an existing atlas; raise AtlasError with a one-line reason if it is not one."""
        root = Path(root)
        if not root.is_dir():
            raise AtlasError(f"{root} is not a directory")
        if not (root / INFO_FILE).exists():
            raise AtlasError(
                f"{root} is not an atlas (no atlas.json); run `weightatlas collect` first"
            )
        atlas = cls(root)
        atlas.check_links()
        return atlas

    def check_links(self) -> None:
        """Refuse an atlas whose tables or stage folders are symlinks leading outside it.

        A shared atlas must not make a stage write (or read) elsewhere: ``ln -s /victim
        ATLAS/backbone`` would have ``train`` write into ``/victim``. Every top-level entry
        (``atlas.json``, ``manifest.jsonl``, ``tokens/``, ``backbone/``, ...) and the entries of
        the stage folders, two levels down, are checked; ``hub/`` is the collector's (its
        snapshots hold links into ``../../blobs``, each resolved before use). Links that stay
        inside the atlas are allowed. The cost is one ``lstat`` per entry checked.

        Raises:
            AtlasError: one line naming the link, where it leads, and the fix.
        """
        root_r = self.root.resolve()
        try:
            top = list(os.scandir(self.root))
        except OSError as e:
            raise AtlasError(f"{self.root}: cannot list the atlas ({e.strerror})") from None
        stack = [(e, 0) for e in top]
        while stack:
            entry, depth = stack.pop()
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if target != root_r and root_r not in target.parents:
                    raise AtlasError(
                        f"{entry.path} is a symlink to {os.readlink(entry.path)!s}, outside the"
                        " atlas; refused (a stage would write there): remove the link or"
                        " replace it with a copy"
                    )
                continue
            if depth < _LINK_CHECK_DEPTH and not (depth == 0 and entry.name == "hub"):
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.extend((e, depth + 1) for e in os.scandir(entry.path))
                except OSError:
                    continue

    @property
    def info_path(self) -> Path:
        return self.root / INFO_FILE

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    @property
    def tokens(self) -> TokenTable:
        """``tokens/`` as a table (index path, ``exists()``, ``stamp()``)."""
        return TokenTable(self.tokens_dir)

    @property
    def backbone(self) -> BackboneFiles:
        """``backbone/`` (the atlas' own backbone) as a table."""
        return BackboneFiles(self.backbone_dir)

    @property
    def embeddings(self) -> EmbeddingTables:
        """``embeddings/`` (the atlas' own backbone's embeddings) as tables."""
        return EmbeddingTables(self.embeddings_dir)

    @property
    def backbone_dir(self) -> Path:
        return self.root / "backbone"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def write_result(self, name: str, result: Any, markdown: str) -> Path:
        """Write ``results/NAME.json`` and its rendering ``results/NAME.md`` (both atomic);
        returns the JSON's path."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.results_dir / f"{name}.json", result)
        atomic_write_bytes(self.results_dir / f"{name}.md", markdown.encode())
        return self.results_dir / f"{name}.json"

    @property
    def generated_dir(self) -> Path:
        """``ATLAS/generated``, refused (AtlasError) if it is a symlink or resolves outside the
        atlas: a shared atlas must not make ``sample`` write elsewhere (issue 12)."""
        p = self.root / "generated"
        if os.path.islink(p):
            raise AtlasError(f"{p} is a symlink (to {os.readlink(p)}); refused, remove it")
        root_r, p_r = self.root.resolve(), p.resolve()
        if root_r not in p_r.parents:
            raise AtlasError(f"{p} resolves to {p_r}, outside the atlas; refused")
        return p

    def info(self) -> dict[str, Any]:
        """atlas.json as a dict."""
        return read_json(self.info_path) if self.info_path.exists() else {}

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into atlas.json atomically."""
        info = self.info()
        info.update(fields)
        write_json(self.info_path, info)
        return info

    def manifest(self) -> list[ModelRow]:
        """All manifest rows (``core.manifest.ModelRow``); the last row per model id wins."""
        return latest_rows(read_jsonl(self.manifest_path))

    def order_manifest(self) -> bool:
        """Store the manifest's rows in model-id order (``core.manifest.in_id_order``), atomically.

        Collect appends rows as its workers finish them (a killed run keeps every finished
        row) and calls this at the end, so the stored order depends only on the rows.

        Returns:
            True when the file was rewritten (it was not already in order).
        """
        rows = list(read_jsonl(self.manifest_path))
        ordered = in_id_order(rows)
        if ordered == rows:
            return False
        atomic_write_bytes(self.manifest_path, "".join(dumps(r) + "\n" for r in ordered).encode())
        return True

    def accepted(self, split: str | None = None) -> list[ModelRow]:
        """Accepted manifest rows, optionally of one split (train/val/test)."""
        return [
            r
            for r in self.manifest()
            if r.get("status") == "accepted" and (split is None or r.get("split") == split)
        ]


WORKSPACE_ENV = "WEIGHTATLAS_WORKSPACE"


def workspace_root() -> Path:
    """The user's workspace: ``$WEIGHTATLAS_WORKSPACE``, else ``~/.cache/weightatlas/workspace``
    (``$XDG_CACHE_HOME`` honoured). The app's generated models and the list of known atlases
    live there, never inside an atlas."""
    env = os.environ.get(WORKSPACE_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return (Path(cache).expanduser() / "weightatlas" / "workspace").resolve()


class KnownAtlases:
    """The atlases this user's pipeline stages ran on: ``WORKSPACE/atlases.json``, most recent
    first, at most :attr:`LIMIT` absolute paths. The app resolves a typed relative name
    (``my-atlas``) against it, so the name works whichever folder the app was started from."""

    FILE = "atlases.json"
    LIMIT = 50

    def __init__(self, root: str | Path | None = None):
        self.path = Path(root if root is not None else workspace_root()) / self.FILE

    def paths(self) -> list[Path]:
        """Known atlas directories, most recent first (unreadable file: none)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        items = data.get("atlases") if isinstance(data, dict) else None
        return [Path(p) for p in items or [] if isinstance(p, str) and Path(p).is_absolute()]

    def add(self, root: str | Path) -> None:
        """Record ``root`` (an atlas directory) as the most recent; silent where the workspace
        cannot be written (a read-only home must not fail a stage)."""
        path = Path(root).expanduser().resolve()
        if not (path / "atlas.json").is_file():
            return
        known = [path, *[p for p in self.paths() if p != path]][: self.LIMIT]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"atlases": [str(p) for p in known]})
        except OSError:
            pass

    def find(self, text: str) -> list[Path]:
        """Known atlases whose path ends with the relative path ``text`` and that still are
        atlases, most recent first."""
        parts = Path(text).parts
        if not parts or Path(text).is_absolute():
            return []
        return [
            p
            for p in self.paths()
            if p.parts[-len(parts) :] == parts and (p / "atlas.json").is_file()
        ]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_path(path: str | Path) -> _AtomicPath:
    """Context manager giving a temp path that is renamed onto ``path`` on success.

    Use it for writers that want a filename (``safetensors.torch.save_file``, ``np.save``).
    """
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=f".tmp{self.path.suffix}"
        )
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON with numpy/Path support; NaN/Inf become null so the output is strict JSON."""
    return json.dumps(_finite(obj), default=_json_default, indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return _finite(obj.tolist())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows, one fsync'd line each, to a JSONL table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Truncate a partial last line (left by a killed writer) so appends stay line-aligned."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


class CorruptLineWarning(UserWarning):
    """A complete line of a JSONL table that is not a JSON object (skipped, with its number)."""


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield rows of a JSONL table; a torn last line left by a killed writer is skipped.

    A complete line that is not a JSON object (a damaged or hand-edited table) is skipped with a
    ``CorruptLineWarning`` naming the file and the line number; the CLI prints it as one line.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # torn final line
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                row = None
            if isinstance(row, dict):
                yield row
            else:
                warnings.warn(
                    f"{path} line {n} is not a JSON object; skipped (its row is ignored)",
                    CorruptLineWarning,
                    stacklevel=2,
                )


# ---------------------------------------------------------------------------------------------
# the stage folders as typed tables: the only code that knows their file names


def stamp(*paths: Path) -> float:
    """Sum of modification times of ``paths`` (0 for missing ones): a cache key for file contents."""
    return float(sum(p.stat().st_mtime for p in paths if p.exists()))


@dataclass(frozen=True)
class TokenTable:
    """``tokens/``: ``index.json`` (scheme, token size, models), shards and per-rank parts.

    The one source of an atlas' token scheme and token size (``scheme_and_size``); the defaults
    a first tokenization uses are written here once (``DEFAULT_SCHEME``, ``DEFAULT_TOKEN_SIZE``).
    """

    dir: Path
    INDEX = "index.json"
    STATS = "stats.json"
    PARTS = "parts"  # per-rank rows not yet merged into the index
    DEFAULT_SCHEME = "dense"
    DEFAULT_TOKEN_SIZE = 64  # values per token where neither a store nor a config says otherwise

    @property
    def parts_dir(self) -> Path:
        return self.dir / self.PARTS

    @property
    def index_path(self) -> Path:
        return self.dir / self.INDEX

    @property
    def stats_path(self) -> Path:
        return self.dir / self.STATS

    def exists(self) -> bool:
        """True once ``tokenize`` has merged an index."""
        return self.index_path.exists()

    def stamp(self) -> float:
        """Cache key of the merged index."""
        return stamp(self.index_path)

    def read_index(self) -> dict[str, Any]:
        """The merged token index: ``index.json`` plus rows of ``parts/*.jsonl`` not yet merged.

        Returns ``{"scheme", "token_size", "models": {id: entry}, "failed": {id: reason}}``.
        """
        index: dict[str, Any] = {"scheme": None, "token_size": None, "models": {}, "failed": {}}
        if self.exists():
            index.update(read_json(self.index_path))
        rows = []
        for part in sorted(self.parts_dir.glob("*.jsonl")):
            rows.extend(read_jsonl(part))
        rows.sort(key=lambda r: (r.get("status") != "ok", r.get("shard", ""), r["id"]))
        for r in rows:
            mid = r["id"]
            if mid in index["models"]:
                continue
            if r.get("status") == "ok":
                index["models"][mid] = {k: v for k, v in r.items() if k not in ("id", "status")}
                index["failed"].pop(mid, None)
            else:  # the latest failure's reason wins
                index["failed"][mid] = r.get("reason", "unknown")
            for key in ("scheme", "token_size"):
                if index[key] is None and r.get(key) is not None:
                    index[key] = r[key]
        return index

    def scheme_and_size(self) -> tuple[str | None, int | None]:
        """The store's token scheme and token size, ``(None, None)`` before its first model."""
        index = self.read_index()
        size = index["token_size"]
        return index["scheme"], None if size is None else int(size)


@dataclass(frozen=True)
class BackboneFiles:
    """A backbone folder: ``model.safetensors`` and ``config.json`` (its run configuration)."""

    dir: Path
    WEIGHTS = "model.safetensors"
    CONFIG = "config.json"
    METRICS = "metrics.jsonl"  # one row per validation during training

    @property
    def metrics_path(self) -> Path:
        return self.dir / self.METRICS

    @property
    def weights_path(self) -> Path:
        return self.dir / self.WEIGHTS

    @property
    def config_path(self) -> Path:
        return self.dir / self.CONFIG

    def exists(self) -> bool:
        """True when the folder holds trained weights and their configuration."""
        return self.weights_path.exists() and self.config_path.exists()

    def config(self) -> dict[str, Any]:
        """``config.json`` as a dict (``{}`` when absent)."""
        return read_json(self.config_path) if self.config_path.exists() else {}

    def stamp(self) -> float:
        """Cache key of the weights and configuration."""
        return stamp(self.weights_path, self.config_path)


@dataclass(frozen=True)
class EmbeddingTables:
    """An embeddings folder: per-model and per-layer rows, 2-D maps and run info."""

    dir: Path
    MODELS = "models.jsonl"
    LAYERS = "layers.jsonl"
    MAPS = "maps.json"
    INFO = "info.json"
    TENSORS = "models.safetensors"  # z, layer_z, layer_spread (the merged tensors)
    REDUCERS = "reducers"  # fitted PCA/UMAP reducers, one safetensors file each
    PARTS = "parts"  # per-rank parts before the merge

    @property
    def tensors_path(self) -> Path:
        return self.dir / self.TENSORS

    @property
    def reducers_dir(self) -> Path:
        return self.dir / self.REDUCERS

    @property
    def parts_dir(self) -> Path:
        return self.dir / self.PARTS

    @property
    def models_path(self) -> Path:
        return self.dir / self.MODELS

    @property
    def layers_path(self) -> Path:
        return self.dir / self.LAYERS

    @property
    def maps_path(self) -> Path:
        return self.dir / self.MAPS

    @property
    def info_path(self) -> Path:
        return self.dir / self.INFO

    def exists(self) -> bool:
        """True when ``embed`` has written the model rows and the maps."""
        return self.models_path.exists() and self.maps_path.exists()

    def models(self) -> list[dict[str, Any]]:
        """Per-model rows (``models.jsonl``), in file order."""
        return list(read_jsonl(self.models_path))

    def layers(self) -> list[dict[str, Any]]:
        """Per-layer rows (``layers.jsonl``), in file order."""
        return list(read_jsonl(self.layers_path))

    def info(self) -> dict[str, Any]:
        """``info.json`` as a dict (``{}`` when absent)."""
        return read_json(self.info_path) if self.info_path.exists() else {}

    def stamp(self) -> float:
        """Cache key of the model rows and maps."""
        return stamp(self.models_path, self.maps_path)


@dataclass(frozen=True)
class GeneratedCard:
    """A generated model's card: ``README.md`` in the model's folder (``ATLAS/generated/NAME/``).

    YAML front matter (the Hub's metadata: library, tags, datasets, ``model-index``) whose
    ``weightatlas:`` block records how the model was made and scored (``card_text``), then
    markdown. The one reader and writer of these cards: ``sample`` writes them; the Generate
    page, ``evaluate_generation``, the ablations, the modality experiment and the benches read
    them here.
    """

    dir: Path
    CARD = "README.md"
    BLOCK = "weightatlas"  # the front matter's key of the provenance block

    @property
    def path(self) -> Path:
        return self.dir / self.CARD

    def exists(self) -> bool:
        """True when the folder has a card."""
        return self.path.is_file()

    def text(self) -> str:
        """The card as written (markdown with its front matter); ``""`` when absent."""
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return ""

    def meta(self) -> dict[str, Any]:
        """The front matter, parsed with ``yaml.safe_load`` only (plain data, no object
        construction); ``{}`` when the card is absent or its front matter is malformed."""
        import yaml

        text = self.text()
        if not text.startswith("---"):
            return {}
        end = text.find("\n---", 3)
        if end < 0:
            return {}
        try:
            meta = yaml.safe_load(text[3:end])
        except yaml.YAMLError:
            return {}
        return meta if isinstance(meta, dict) else {}

    def block(self) -> dict[str, Any]:
        """The ``weightatlas:`` block (empty if none)."""
        block = self.meta().get(self.BLOCK)
        return block if isinstance(block, dict) else {}

    def test_accuracy(self) -> tuple[float, str | None]:
        """The recorded test accuracy and task; refused in one line when the card has none."""
        from core.errors import WeightAtlasError  # core.errors imports this module

        block = self.block()
        acc = block.get("test_accuracy")
        if not isinstance(acc, int | float):
            raise WeightAtlasError(f"{self.path} records no test_accuracy")
        return float(acc), block.get("task")

    def write(self, text: str) -> None:
        """Write the card atomically."""
        atomic_write_bytes(self.path, text.encode())
