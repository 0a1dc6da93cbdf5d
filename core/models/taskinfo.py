"""What a model needs to know about its task: input kind and shape, classes, token ids.

The facts a model family sizes itself by (``core.models.families``) and that the zoo's tasks
(``core.zoos.tasks``, which hold the data) declare. Sequence tasks share the token ids below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

PAD_ID = 0  # reserved: never occurs in an input (the models' pad_token_id)
CLS_ID = 1  # opens every sequence (BERT pools its first position; GPT-2 reads the last)
FIRST_SYMBOL = 2


@dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about a task's inputs and outputs.

    ``n_features`` is the flattened input size (``C * H * W`` for images, the sequence length
    for sequences); ``in_chans`` and ``img_size`` are 0 for tabular and sequence tasks.
    ``vocab_size`` and ``seq_len`` are set for sequence tasks only (token ids lie in
    ``[0, vocab_size)``, ``PAD_ID`` never occurs). ``dataset`` is a Hub-style dataset name for cards.
    """

    name: str
    kind: Literal["image", "tabular", "sequence"]
    in_chans: int
    img_size: int
    n_features: int
    num_classes: int
    dataset: str
    description: str
    vocab_size: int = 0
    seq_len: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` for images, ``(F,)`` tabular, ``(S,)`` sequences."""
        if self.kind == "image":
            return (self.in_chans, self.img_size, self.img_size)
        return (self.n_features,)

    @property
    def input_dtype(self) -> torch.dtype:
        """``torch.int64`` token ids for sequence tasks, else ``torch.float32``."""
        return torch.int64 if self.kind == "sequence" else torch.float32
