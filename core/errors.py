"""Expected, user-facing errors: the CLI prints these as one line and exits 2."""

from __future__ import annotations

from core.atlas import AtlasError
from core.config import ConfigError


class WeightAtlasError(ValueError):
    """Bad input that the user can fix (a path, an id, an architecture spec, a limit)."""


class DiskFullError(WeightAtlasError):
    """The disk filled up while a stage wrote its output; what was finished is kept."""


class RejectedModel(WeightAtlasError):
    """A candidate model that fails a sanity check; ``reason`` goes into the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


USER_ERRORS: tuple[type[BaseException], ...] = (
    WeightAtlasError,
    AtlasError,
    ConfigError,
    FileNotFoundError,
    NotADirectoryError,
)
