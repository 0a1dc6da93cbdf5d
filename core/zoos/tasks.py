"""Small real data sets that ship inside packages, tasks derived from them, and the train/eval loop.

Every task has fixed, seeded, stratified train/val/test splits (60/20/20; ``shapes16-probe``
draws each split apart, with a large test split), so a model trained anywhere is evaluated on
the same examples. Image tasks give ``(B, C, H, W)`` float32 images in
[0, 1] with one channel; tabular tasks give ``(B, F)`` float32 features standardized with the
train split's mean and std; sequence tasks give ``(B, S)`` int64 token ids (id 0 is padding and
never occurs, id 1 a ``[CLS]`` token opening every sequence, symbols from id 2). Labels are int64
class indices.

    from core.zoos.tasks import get_task, train_epochs, evaluate_accuracy
    task = get_task("digits10")
    X, y = task.split("train")                 # (1077, 1, 8, 8), (1077,)
    train_epochs(model, task, epochs=5, lr=1e-3)
    evaluate_accuracy(model, task, "test")

Tasks (``TASKS``): ``digits10`` (scikit-learn digits, 8x8), ``digits-0to4`` / ``digits-5to9``
(class subsets), ``digits-parity`` (even vs odd), ``digits-rot90``, ``digits-invert``,
``digits16`` (bilinear 16x16 upsampling), ``shapes16`` (procedurally drawn shapes, 16x16),
``gratings16`` (procedural oriented gratings, 16x16; in no zoo preset: the held-out task),
``shapes16-probe`` (shapes16's drawing with 900 / 300 / 6,000 train / val / test images, each
split its own draw: the seed zoo's task, whose test accuracies have standard error <= 0.0065),
``wine`` and ``breast-cancer`` (tabular), ``seq-majority``, ``seq-sorted`` and ``seq-brackets``
(procedural token sequences, see ``SEQUENCE_TASKS``). Derived digit tasks reuse the split of
``digits10`` so their test images are transforms of the same test digits.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import WeightAtlasError
from core.models.optim import adamw
from core.models.registry import logits
from core.models.taskinfo import CLS_ID, FIRST_SYMBOL, TaskInfo

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 20240  # fixed: the splits are part of a task's definition
# Hub pipeline tag of a task kind, as on huggingface.co (our sequences are token ids: text)
PIPELINE_TAGS = {
    "image": "image-classification",
    "tabular": "tabular-classification",
    "sequence": "text-classification",
}


@dataclass(frozen=True)
class Task:
    """A task's info and its three fixed splits (tensors are shared; do not modify them)."""

    info: TaskInfo
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)`` of ``train``, ``val`` or ``test``: float32 inputs and int64 labels."""
        if name not in self.splits:
            raise WeightAtlasError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        return self.splits[name]


_TASK_BUILDERS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator registering a zero-argument task builder under ``name``."""

    def deco(fn: Callable[[], Task]) -> Callable[[], Task]:
        if name in _TASK_BUILDERS:
            raise ValueError(f"task {name!r} registered twice")
        _TASK_BUILDERS[name] = fn
        return fn

    return deco


@cache
def get_task(name: str) -> Task:
    """The task called ``name`` (built once per process, then cached)."""
    if name not in _TASK_BUILDERS:
        raise WeightAtlasError(f"unknown task {name!r}; choose from {', '.join(_TASK_BUILDERS)}")
    return _TASK_BUILDERS[name]()


# ---------------------------------------------------------------------------------------------
# splits and raw data


def stratified_split(y: np.ndarray, key: str) -> dict[str, np.ndarray]:
    """Fixed stratified 60/20/20 index split of labels ``y``, seeded by ``key``."""
    rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(key.encode())])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(SPLIT_FRACTIONS[0] * len(idx)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """scikit-learn digits as ``(n, 1, 8, 8)`` float32 in [0, 1], labels, and the split.

    Read from the CSV that scikit-learn ships (what ``sklearn.datasets.load_digits`` parses;
    tests/test_datasets.py checks they agree) without importing scikit-learn, whose import
    costs ~2 s of every ``weightatlas sample`` on a digits task.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise WeightAtlasError("the digits task needs scikit-learn installed")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt") as f:
        data = np.loadtxt(f, delimiter=",")  # (n, 65): 64 pixels in 0..16, then the label
    X = (data[:, :-1].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)  # (n, 1, 8, 8)
    y = data[:, -1].astype(np.int64)
    return X, y, stratified_split(y, "digits")


def _to_task(info: TaskInfo, X: np.ndarray, y: np.ndarray, split: dict[str, np.ndarray]) -> Task:
    splits = {
        s: (torch.from_numpy(np.ascontiguousarray(X[idx])), torch.from_numpy(y[idx]))
        for s, idx in split.items()
    }
    return Task(info, splits)


def _digit_task(
    name: str,
    description: str,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    classes: tuple[int, ...] | None = None,
    relabel: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Task:
    X, y, split = _digits()
    if transform is not None:
        X = transform(X).astype(np.float32)
    if classes is not None:
        keep = np.isin(y, classes)
        lut = np.full(10, -1, dtype=np.int64)
        lut[list(classes)] = np.arange(len(classes))
        old_to_new = np.cumsum(keep) - 1
        split = {s: old_to_new[idx[keep[idx]]] for s, idx in split.items()}
        X, y = X[keep], lut[y[keep]]
    if relabel is not None:
        y = relabel(y)
    num_classes = int(y.max()) + 1
    info = TaskInfo(
        name=name,
        kind="image",
        in_chans=X.shape[1],
        img_size=X.shape[2],
        n_features=int(np.prod(X.shape[1:])),
        num_classes=num_classes,
        dataset="sklearn/digits",
        description=description,
    )
    return _to_task(info, X, y, split)


def _upsample(X: np.ndarray, size: int) -> np.ndarray:
    t = F.interpolate(torch.from_numpy(X), size=(size, size), mode="bilinear", align_corners=False)
    return t.clamp(0.0, 1.0).numpy()


@register_task("digits10")
def _digits10() -> Task:
    return _digit_task("digits10", "handwritten digits 0-9, 8x8 grey")


@register_task("digits-0to4")
def _digits_0to4() -> Task:
    return _digit_task("digits-0to4", "digits 0-4 only, 8x8", classes=(0, 1, 2, 3, 4))


@register_task("digits-5to9")
def _digits_5to9() -> Task:
    return _digit_task(
        "digits-5to9", "digits 5-9 only (as classes 0-4), 8x8", classes=(5, 6, 7, 8, 9)
    )


@register_task("digits-parity")
def _digits_parity() -> Task:
    return _digit_task("digits-parity", "even (0) vs odd (1) digits, 8x8", relabel=lambda y: y % 2)


@register_task("digits-rot90")
def _digits_rot90() -> Task:
    return _digit_task(
        "digits-rot90",
        "digits rotated by 90 degrees counter-clockwise, 8x8",
        transform=lambda X: np.rot90(X, k=1, axes=(2, 3)),
    )


@register_task("digits-invert")
def _digits_invert() -> Task:
    return _digit_task(
        "digits-invert",
        "digits with inverted intensities (1 - x), 8x8",
        transform=lambda X: 1.0 - X,
    )


@register_task("digits16")
def _digits16() -> Task:
    return _digit_task(
        "digits16", "digits upsampled bilinearly to 16x16", transform=lambda X: _upsample(X, 16)
    )


SHAPES = ("disc", "ring", "square", "triangle", "plus", "diagonal")
SHAPES_PER_CLASS = 300
SHAPES_SEED = 7


def draw_shapes(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural grey images of ``SHAPES`` at random position, scale and contrast, with noise.

    Returns ``(n, 1, size, size)`` float32 in [0, 1] and int64 labels, class-major.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(n_per_class):
            r = rng.uniform(0.2, 0.38) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            dx, dy = xx - cx, yy - cy
            if shape == "disc":
                m = dx**2 + dy**2 <= r**2
            elif shape == "ring":
                d = np.sqrt(dx**2 + dy**2)
                m = (d <= r) & (d >= 0.55 * r)
            elif shape == "square":
                m = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
            elif shape == "triangle":
                m = (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
            elif shape == "plus":
                w = 0.3 * r
                m = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | (
                    (np.abs(dy) <= w) & (np.abs(dx) <= r)
                )
            else:  # diagonal bar, either direction
                sign = rng.choice([-1.0, 1.0])
                m = (np.abs(dx - sign * dy) <= 0.35 * r * np.sqrt(2)) & (
                    np.maximum(np.abs(dx), np.abs(dy)) <= r
                )
            fg, bg = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.3)
            img = np.where(m, fg, bg) + rng.normal(0.0, 0.08, size=(size, size))
            images.append(np.clip(img, 0.0, 1.0).astype(np.float32))
            labels.append(label)
    return np.stack(images)[:, None], np.asarray(labels, dtype=np.int64)


def _procedural16(
    name: str, X: np.ndarray, y: np.ndarray, n_classes: int, description: str
) -> Task:
    """A one-channel 16x16 task from procedurally drawn images, split stratified by its name."""
    info = TaskInfo(
        name=name,
        kind="image",
        in_chans=1,
        img_size=16,
        n_features=16 * 16,
        num_classes=n_classes,
        dataset=f"weightatlas/{name}",
        description=description,
    )
    return _to_task(info, X, y, stratified_split(y, name))


@register_task("shapes16")
def _shapes16() -> Task:
    X, y = draw_shapes(SHAPES_PER_CLASS, 16, SHAPES_SEED)
    return _procedural16(
        "shapes16", X, y, len(SHAPES),
        f"procedurally drawn shapes ({', '.join(SHAPES)}) with noise, 16x16",
    )  # fmt: skip


GRATING_ANGLES = (0, 30, 60, 90, 120, 150)  # degrees: one class each


GRATINGS_PER_CLASS = 300


GRATINGS_SEED = 23


def draw_gratings(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural oriented sinusoidal gratings in a soft round aperture, with noise.

    The class is the orientation (``GRATING_ANGLES``, jittered by +-5 degrees); spatial
    frequency (1.5-3.5 cycles per image), phase, contrast, aperture centre and size are drawn
    per image. No collected task has such inputs: the generation stage's held-out task.

    Returns ``(n, 1, size, size)`` float32 in [0, 1] and int64 labels, class-major.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images, labels = [], []
    for label, angle in enumerate(GRATING_ANGLES):
        for _ in range(n_per_class):
            theta = np.deg2rad(angle + rng.uniform(-5.0, 5.0))
            freq = rng.uniform(1.5, 3.5) / size
            phase = rng.uniform(0.0, 2 * np.pi)
            u = xx * np.cos(theta) + yy * np.sin(theta)
            wave = np.sin(2 * np.pi * freq * u + phase)
            cx, cy = rng.uniform(0.35, 0.65, size=2) * size
            radius = rng.uniform(0.3, 0.5) * size
            aperture = 1.0 / (1.0 + np.exp(((xx - cx) ** 2 + (yy - cy) ** 2) ** 0.5 - radius))
            img = 0.5 + 0.5 * rng.uniform(0.4, 1.0) * wave * aperture
            img += rng.normal(0.0, 0.1, size=(size, size))
            images.append(np.clip(img, 0.0, 1.0).astype(np.float32))
            labels.append(label)
    return np.stack(images)[:, None], np.asarray(labels, dtype=np.int64)


@register_task("gratings16")
def _gratings16() -> Task:
    X, y = draw_gratings(GRATINGS_PER_CLASS, 16, GRATINGS_SEED)
    return _procedural16(
        "gratings16", X, y, len(GRATING_ANGLES),
        "procedural oriented gratings (6 orientations, 30 degrees apart) in a soft aperture "
        "with noise, 16x16; left out of every zoo preset (held-out task)",
    )  # fmt: skip


# the seed zoo's task (003's zoos test on 10k images): shapes drawn as for ``shapes16``, each
# split an independent draw, so the test split can be as large as a probe needs. With 6,000 test
# images a model's test accuracy p has standard error sqrt(p (1 - p) / 6000) <= 0.0065; digits
# (360 test images) gives up to 0.026, larger than the whole spread of the generalization gap.
# A small train split (150 per class) leaves the seeds apart in accuracy and gap.
PROBE_SHAPES_PER_CLASS = {"train": 150, "val": 50, "test": 1000}
PROBE_SHAPES_SEED = 31  # splits drawn with seeds 31, 32 and 33


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy measured on ``n`` examples."""
    if n < 1:
        raise ValueError("an accuracy needs at least one example")
    p = min(max(float(accuracy), 0.0), 1.0)
    return float(np.sqrt(p * (1.0 - p) / n))


@register_task("shapes16-probe")
def _shapes16_probe() -> Task:
    parts = {
        s: draw_shapes(PROBE_SHAPES_PER_CLASS[s], 16, PROBE_SHAPES_SEED + i)
        for i, s in enumerate(SPLITS)
    }
    n = {s: len(y) for s, (_, y) in parts.items()}
    info = TaskInfo(
        name="shapes16-probe",
        kind="image",
        in_chans=1,
        img_size=16,
        n_features=16 * 16,
        num_classes=len(SHAPES),
        dataset="weightatlas/shapes16-probe",
        description=f"shapes16's drawing ({', '.join(SHAPES)}), each split drawn apart: "
        f"{n['train']} train, {n['val']} val, {n['test']} test images (the seed zoo's probes)",
    )
    return Task(
        info, {s: (torch.from_numpy(X), torch.from_numpy(y)) for s, (X, y) in parts.items()}
    )


def _tabular_task(name: str, loader: Callable, dataset: str, description: str) -> Task:
    d = loader()
    X = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    split = stratified_split(y, name)
    mean = X[split["train"]].mean(axis=0)
    std = X[split["train"]].std(axis=0)
    X = ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)  # (n, F) standardized
    info = TaskInfo(
        name=name,
        kind="tabular",
        in_chans=0,
        img_size=0,
        n_features=X.shape[1],
        num_classes=int(y.max()) + 1,
        dataset=dataset,
        description=description,
    )
    return _to_task(info, X, y, split)


@register_task("wine")
def _wine() -> Task:
    from sklearn.datasets import load_wine

    return _tabular_task(
        "wine", load_wine, "sklearn/wine", "wine cultivars from 13 chemical features"
    )


@register_task("breast-cancer")
def _breast_cancer() -> Task:
    from sklearn.datasets import load_breast_cancer

    return _tabular_task(
        "breast-cancer",
        load_breast_cancer,
        "sklearn/breast_cancer",
        "malignant vs benign tumours from 30 cell-nucleus features",
    )


# ---------------------------------------------------------------------------------------------
# sequence tasks (procedural, fixed seeds): token ids for BERT- and GPT-2-style classifiers

SEQUENCE_PER_CLASS = 600
SEQUENCE_SEED = 11
SEQUENCE_TASKS = ("seq-majority", "seq-sorted", "seq-brackets")


def _sequence_task(
    name: str, X: np.ndarray, y: np.ndarray, n_symbols: int, description: str
) -> Task:
    """A sequence task from symbol indices ``X`` (n, L) in [0, n_symbols): ``[CLS]`` + symbols."""
    ids = np.concatenate([np.full((len(X), 1), CLS_ID), X + FIRST_SYMBOL], axis=1).astype(np.int64)
    info = TaskInfo(
        name=name,
        kind="sequence",
        in_chans=0,
        img_size=0,
        n_features=ids.shape[1],
        num_classes=int(y.max()) + 1,
        dataset=f"weightatlas/{name}",
        description=description,
        vocab_size=FIRST_SYMBOL + n_symbols,
        seq_len=ids.shape[1],
    )
    return _to_task(info, ids, y.astype(np.int64), stratified_split(y, name))


def _draw_unique(
    draw: Callable[[], tuple[np.ndarray, int] | None], n_per_class: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` distinct sequences per class from ``draw() -> (seq, label) | None``.

    Duplicates are dropped, so no sequence is in two splits; class-major order.
    """
    seen: set[bytes] = set()
    per: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    while any(len(p) < n_per_class for p in per):
        got = draw()
        if got is None:
            continue
        s, label = got
        key = s.astype(np.int8).tobytes()
        if len(per[label]) < n_per_class and key not in seen:
            seen.add(key)
            per[label].append(s)
    X = np.stack([s for p in per for s in p])
    return X, np.repeat(np.arange(n_classes), n_per_class).astype(np.int64)


def majority_sequences(
    n_per_class: int, length: int, n_symbols: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symbol sequences labelled with the symbol occurring most often (a unique maximum).

    Uniform draws, so margins range from one occurrence to many: the task needs counting.
    """
    rng = np.random.default_rng(seed)

    def draw() -> tuple[np.ndarray, int] | None:
        s = rng.integers(0, n_symbols, size=length)
        counts = np.bincount(s, minlength=n_symbols)
        if (counts == counts.max()).sum() != 1:
            return None
        return s, int(counts.argmax())

    return _draw_unique(draw, n_per_class, n_symbols)


def sorted_sequences(
    n_per_class: int, length: int, n_symbols: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unsorted (label 0) vs sorted (label 1, non-decreasing) symbol sequences.

    Half of the draws for label 0 are sorted sequences with one adjacent pair of distinct
    symbols swapped (a single local violation), so a model must check every neighbouring pair.
    """
    rng = np.random.default_rng(seed)
    step = [0]

    def draw() -> tuple[np.ndarray, int] | None:
        step[0] += 1
        s = np.sort(rng.integers(0, n_symbols, size=length))
        if step[0] % 2:
            return s, 1
        if step[0] % 4 == 0:
            s = rng.integers(0, n_symbols, size=length)
        else:
            pairs = np.flatnonzero(s[:-1] != s[1:])
            if len(pairs) == 0:
                return None
            i = rng.choice(pairs)
            s[[i, i + 1]] = s[[i + 1, i]]
        return (s, 0) if np.any(s[:-1] > s[1:]) else None

    return _draw_unique(draw, n_per_class, 2)


def bracket_sequences(n_per_class: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unbalanced (label 0) vs balanced (label 1) strings of ``(`` = 0 and ``)`` = 1.

    Every string holds as many opening as closing brackets, so counting alone cannot tell the
    classes apart: an unbalanced string closes more than it opened at some prefix.
    """
    rng = np.random.default_rng(seed)
    base = np.repeat(np.arange(2), length // 2)

    def draw() -> tuple[np.ndarray, int]:
        s = rng.permutation(base)
        depth = np.cumsum(np.where(s == 0, 1, -1))
        return s, int(depth.min() >= 0)

    return _draw_unique(draw, n_per_class, 2)


@register_task("seq-majority")
def _seq_majority() -> Task:
    X, y = majority_sequences(SEQUENCE_PER_CLASS, 16, 4, SEQUENCE_SEED)
    return _sequence_task(
        "seq-majority", X, y, 4, "which of 4 symbols occurs most often in 16 tokens"
    )


@register_task("seq-sorted")
def _seq_sorted() -> Task:
    X, y = sorted_sequences(SEQUENCE_PER_CLASS, 12, 6, SEQUENCE_SEED + 1)
    return _sequence_task(
        "seq-sorted", X, y, 6, "whether 12 tokens over 6 symbols are in non-decreasing order"
    )


@register_task("seq-brackets")
def _seq_brackets() -> Task:
    X, y = bracket_sequences(SEQUENCE_PER_CLASS, 20, SEQUENCE_SEED + 2)
    return _sequence_task(
        "seq-brackets", X, y, 2, "whether 20 brackets (10 open, 10 close) are balanced"
    )


TASKS: tuple[str, ...] = tuple(_TASK_BUILDERS)


# ---------------------------------------------------------------------------------------------
# training and evaluation


@dataclass(frozen=True)
class Metrics:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy of a model on one split."""

    accuracy: float
    loss: float


def _as_task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def train_epochs(
    model: nn.Module,
    task: Task | str,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Train ``model`` on the task's train split with AdamW and cross-entropy.

    Shuffling and any randomness inside the model (dropout) are seeded by ``seed``, without
    touching the global RNG, so the same call on the same model gives the same weights.

    Args:
        model: any classifier that ``core.models.registry.logits`` understands.
        task: a Task or task name.
        epochs: number of passes over the train split.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW decoupled weight decay.
        batch_size: examples per step; a trailing batch of one example is skipped (BatchNorm).
        seed: seed of the shuffling and of dropout.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based), e.g. to save
            a checkpoint.

    Returns:
        The mean training loss of each epoch.
    """

    task = _as_task(task)
    X, y = task.split("train")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            total, count = 0.0, 0
            for start in range(0, len(y), batch_size):
                idx = perm[start : start + batch_size]
                if len(idx) < 2:
                    continue
                loss = F.cross_entropy(logits(model, X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            losses.append(total / max(count, 1))
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch, model)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, task: Task | str, split: str, batch_size: int = 1024) -> Metrics:
    """Accuracy and mean cross-entropy of ``model`` (in eval mode) on one split."""

    task = _as_task(task)
    X, y = task.split(split)
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch_size):
        out = logits(model, X[start : start + batch_size]).float()
        yb = y[start : start + batch_size]
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(dim=-1) == yb).sum())
    model.train(was_training)
    return Metrics(accuracy=correct / len(y), loss=loss / len(y))


def chance_accuracy(task: Task | str, split: str = "test") -> float:
    """The accuracy of always naming the most frequent class of ``split`` (the chance level
    reports draw next to generated and sampled models)."""
    _, y = _as_task(task).split(split)
    return float(np.bincount(y.numpy()).max() / len(y))


def evaluate_accuracy(model: nn.Module, task: Task | str, split: str = "test") -> float:
    """Fraction of correctly classified examples of one split."""
    return evaluate(model, task, split).accuracy
