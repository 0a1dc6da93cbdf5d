"""The token store: memory-mapped reads of ``ATLAS/tokens/`` and SANE's random windows.

``TokenStore(tokens_dir)`` parses each shard's safetensors header once and maps its data with
``np.memmap``, so a window or one model's tokens are read as slices without loading a shard or
a whole model. ``WindowDataset`` is the training dataset: item ``i`` is one window of ``ws``
consecutive tokens of model ``i % len(ids)``, starting at an offset fixed by
``(seed, epoch, i)`` (``set_epoch`` per epoch), so a resumed run sees the same windows. Models
shorter than ``ws`` are padded with masked-out tokens.

    store = TokenStore("ATLAS/tokens")
    ds = WindowDataset(store, store.ids, ws=256, seed=0)
    item = ds[0]  # {"tokens": (T, D) f32, "mask": (T, D) bool, "positions": (T, 3) i64, "model": int}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.atlas import TokenTable
from core.errors import WeightAtlasError
from core.tokens.schemes import LayerEntry, Tokenized
from core.tokens.shards import model_checksum, read_shard


def read_index(tokens_dir: str | Path) -> dict[str, Any]:
    """The merged token index (``core.atlas.TokenTable.read_index``, its owner).

    Returns ``{"scheme", "token_size", "models": {id: entry}, "failed": {id: reason}}``.
    """
    return TokenTable(Path(tokens_dir)).read_index()


_MASK64 = (1 << 64) - 1


class TokenStore:
    """Read-only access to a token store.

    Attributes:
        ids: model ids, sorted.
        scheme: token scheme of the store.
        token_size: D.
    """

    def __init__(self, tokens_dir: str | Path, verify: bool = True):
        """Open the store; with ``verify`` (the default) each model's rows are checked against
        their recorded checksum the first time they are read (``bench tokenize`` measures it)."""
        self.dir = Path(tokens_dir)
        self.verify = verify
        if not self.dir.is_dir():
            raise WeightAtlasError(
                f"{self.dir} has no token store; run `weightatlas tokenize` first"
            )
        index = read_index(self.dir)
        self.scheme: str | None = index["scheme"]
        self.token_size: int = int(index["token_size"] or 0)
        self.failed: dict[str, str] = index["failed"]
        self._models: dict[str, dict[str, Any]] = dict(sorted(index["models"].items()))
        self.ids: list[str] = list(self._models)
        self._shards: dict[str, dict[str, np.ndarray]] = {}
        self._verified: set[str] = set()  # models whose rows matched their checksum
        self._arange = torch.arange(self.token_size)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = {}  # re-mapped lazily in a DataLoader worker
        return state

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def entry(self, model_id: str) -> dict[str, Any]:
        """The index entry of a model (shard, offset, n_tokens, layers, excluded, family, split)."""
        try:
            return self._models[model_id]
        except KeyError:
            raise WeightAtlasError(
                f"model {model_id!r} is not in the token store {self.dir}"
            ) from None

    def n_tokens(self, model_id: str) -> int:
        """Number of tokens N of a model."""
        return int(self.entry(model_id)["n_tokens"])

    def layers(self, model_id: str) -> list[LayerEntry]:
        """The model's layer table (name, shape, dtype, offset, count, rows, row_len, kind, layer)."""
        return [LayerEntry.from_dict(e) for e in self.entry(model_id)["layers"]]

    def _arrays(self, model_id: str) -> tuple[dict[str, np.ndarray], int, int]:
        e = self.entry(model_id)
        shard = e["shard"]
        if shard not in self._shards:
            self._shards[shard] = read_shard(self.dir / shard)
        arrays = self._shards[shard]
        off, n = int(e["offset"]), int(e["n_tokens"])
        if off + n > arrays["tokens"].shape[0]:
            raise WeightAtlasError(f"{shard} is shorter than the index says for {model_id}")
        if self.verify and model_id not in self._verified:
            self._verify(model_id, arrays, off, n)
        return arrays, off, n

    def _verify(self, model_id: str, arrays: dict[str, np.ndarray], off: int, n: int) -> None:
        """Check a model's rows against the checksum tokenize recorded (once per store).

        Raises:
            WeightAtlasError: one line naming the shard, the model and the fix.
        """
        want = self._models[model_id].get("checksum")
        if want is not None and model_checksum(arrays, off, n) != want:
            shard = self.dir / self._models[model_id]["shard"]
            raise WeightAtlasError(
                f"{shard} is damaged: the tokens of {model_id!r} do not match the checksum "
                f"tokenize recorded; delete that shard and re-run `weightatlas tokenize "
                f"{self.dir.parent}` to tokenize its models again"
            )
        self._verified.add(model_id)

    def window(self, model_id: str, start: int, ws: int) -> dict[str, torch.Tensor]:
        """Tokens ``[start, start + ws)`` of a model, padded with masked-out tokens past its end.

        Returns ``{"tokens": (T, D) f32, "mask": (T, D) bool, "positions": (T, 3) i64,
        "valid": (T,) i32}`` with ``T = ws``.
        """
        arrays, off, n = self._arrays(model_id)
        if start < 0 or ws < 0:
            raise ValueError(f"bad window start={start} ws={ws}")
        lo, hi = off + min(start, n), off + min(start + ws, n)
        k = hi - lo
        if k == ws:
            tokens = torch.from_numpy(np.array(arrays["tokens"][lo:hi]))
            valid = torch.from_numpy(np.array(arrays["valid"][lo:hi]))
            positions = torch.from_numpy(np.array(arrays["positions"][lo:hi]))
        else:
            tokens = torch.zeros(ws, self.token_size, dtype=torch.float32)
            valid = torch.zeros(ws, dtype=torch.int32)
            positions = torch.zeros(ws, 3, dtype=torch.int64)
            tokens[:k] = torch.from_numpy(np.array(arrays["tokens"][lo:hi]))
            valid[:k] = torch.from_numpy(np.array(arrays["valid"][lo:hi]))
            positions[:k] = torch.from_numpy(np.array(arrays["positions"][lo:hi]))
        mask = self._arange < valid.unsqueeze(1)
        return {"tokens": tokens, "mask": mask, "positions": positions, "valid": valid}

    def get(self, model_id: str) -> Tokenized:
        """All tokens of one model (copied out of the map), with its layer table."""
        n = self.n_tokens(model_id)
        w = self.window(model_id, 0, n)
        e = self.entry(model_id)
        return Tokenized(
            w["tokens"],
            w["valid"],
            w["positions"],
            self.layers(model_id),
            list(e["excluded"]),
            self.scheme or "",
            self.token_size,
        )

    def iter_chunks(
        self, model_id: str, size: int
    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """All tokens of a model as consecutive chunks of ``size`` (the last one padded).

        Yields ``(start, window dict)``; for embedding and validation over whole models.
        """
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        n = self.n_tokens(model_id)
        for start in range(0, n, size):
            yield start, self.window(model_id, start, size)


def mix_seeds(*xs: int) -> int:
    """A fixed 64-bit hash (splitmix64 steps) of small integers: reproducible across runs."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


class WindowDataset(Dataset):
    """SANE windows: one random window of ``ws`` consecutive tokens of one model per item.

    Item ``i`` is model ``ids[i % len(ids)]``; its window start is a hash of ``(seed, epoch, i)``,
    uniform over ``[0, N - ws]`` (0 for models shorter than ``ws``, padded and masked).

    Args:
        store: the token store.
        ids: model ids to draw from (e.g. the train split); ``model`` in an item indexes this.
        ws: window size T.
        seed: base seed.
        windows_per_model: items per model per epoch (SANE super-samples long models).
    """

    def __init__(
        self, store: TokenStore, ids: list[str], ws: int, seed: int = 0, windows_per_model: int = 1
    ):
        if ws < 1 or windows_per_model < 1:
            raise ValueError("ws and windows_per_model must be >= 1")
        if not ids:
            raise WeightAtlasError("no models to draw windows from")
        missing = [i for i in ids if i not in store]
        if missing:
            raise WeightAtlasError(
                f"{len(missing)} model(s) not in the token store, e.g. {missing[0]!r}"
            )
        self.store = store
        self.ids = list(ids)
        self.ws = ws
        self.seed = seed
        self.windows_per_model = windows_per_model
        self.epoch = 0
        self._n = [store.n_tokens(i) for i in self.ids]

    def set_epoch(self, epoch: int) -> None:
        """Select the windows of ``epoch`` (call once per epoch, before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids) * self.windows_per_model

    def start(self, index: int) -> int:
        """Window start of item ``index`` in the current epoch."""
        span = self._n[index % len(self.ids)] - self.ws + 1
        return mix_seeds(self.seed, self.epoch, index) % span if span > 1 else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        m = index % len(self.ids)
        w = self.store.window(self.ids[m], self.start(index), self.ws)
        return {"tokens": w["tokens"], "mask": w["mask"], "positions": w["positions"], "model": m}
