"""Guards for untrusted input: server-supplied names, bounded file reads, cards, configs, sizes.

Everything a Hub server (or a mirror behind ``HF_ENDPOINT``) or a downloaded repo controls goes
through one of these before it touches a path, a parser or an allocation:

- ``check_repo_id``, ``check_commit``, ``parse_etag``, ``check_filename``: ids, commit shas
  (40 hex digits), ETags (hex digests, quotes and ``W/`` stripped) and file names (one plain
  component: no ``/``, ``\\``, ``..``, NUL or control characters) are validated, never used raw;
- ``resolve_inside``: a path that resolves outside its root (a symlinked ``generated/``) is refused;
- ``read_regular``: regular files only (no FIFO, device or socket; symlinks only within a root),
  opened non-blocking and read up to a byte limit;
- ``load_json_bytes`` (depth limit), ``load_yaml_text`` (no aliases: no billion laughs);
- ``check_build_size``: the parameter count a config implies, from a build on the meta device
  (no real allocation), against the stored values and a limit, before any real build;
- ``printable``: a user's or a model's string made safe for a terminal (control characters,
  escape sequences and bidi overrides shown escaped, as ``repr`` shows them).

Each failure is a ``RejectedModel`` (recorded with its reason) or a ``WeightAtlasError`` (one line).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from core.errors import RejectedModel, WeightAtlasError

HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
# the Hub's rule: letters, digits, '-', '_', '.'; no '--' or '..'; no leading/trailing '-' '.'
_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
MAX_JSON_DEPTH = 64
MAX_YAML_EVENTS = 200_000


class HostileInput(ValueError):
    """Input built to exhaust a parser (YAML aliases, too many nodes, too deep)."""


def check_repo_id(repo_id: Any) -> str:
    """``org/name`` or ``name`` as the Hub allows them; raises WeightAtlasError otherwise."""
    if not isinstance(repo_id, str) or not 0 < len(repo_id) <= 200:
        raise WeightAtlasError(f"bad repo id from the server: {str(repo_id)[:80]!r}")
    parts = repo_id.split("/")
    if (
        len(parts) > 2
        or not all(_ID_PART.fullmatch(p) for p in parts)
        or "--" in repo_id
        or ".." in repo_id
    ):
        raise WeightAtlasError(f"bad repo id from the server: {repo_id[:80]!r}")
    return repo_id


def check_commit(sha: Any, what: str = "commit sha") -> str:
    """A commit sha as 40 lowercase hex digits; raises WeightAtlasError otherwise."""
    if not isinstance(sha, str) or not HEX40.fullmatch(sha):
        raise WeightAtlasError(f"bad {what} from the server: {str(sha)[:80]!r} (not 40 hex digits)")
    return sha


def parse_etag(value: str | None) -> str | None:
    """The hex digest an ETag names (``W/`` and quotes stripped, lowercased), or None.

    Only 40-hex (git blob sha1) and 64-hex (sha256) digests are accepted; anything else (a path,
    an empty string, a CDN's opaque tag) gives None and is never used for anything.
    """
    if not value:
        return None
    v = value.strip()
    if v[:2] in ("W/", "w/"):
        v = v[2:]
    v = v.strip().strip('"').lower()
    return v if HEX40.fullmatch(v) or HEX64.fullmatch(v) else None


def check_filename(name: Any) -> str:
    """A file name from a server listing as one plain path component, or WeightAtlasError.

    Nothing but a top-level name is ever downloaded, so ``a/b``, ``..``, ``\\x``, absolute
    paths, drive letters, NUL and control characters are all refused.
    """
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 255
        or name in (".", "..")
        or any(c in name for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or name != name.strip()
    ):
        raise WeightAtlasError(f"bad file name from the server: {str(name)[:80]!r}")
    return name


def resolve_inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, if it stays inside ``root`` (itself resolved); else WeightAtlasError.

    Use it before writing under a directory that a downloaded or shared atlas could have made
    a symlink (``generated/``), and before reading files a repo names.
    """
    root_r = Path(root).resolve()
    p = Path(path)
    p_r = (p if p.is_absolute() else Path(root) / p).resolve()
    if p_r != root_r and root_r not in p_r.parents:
        raise WeightAtlasError(f"{path} resolves to {p_r}, outside {root_r}; refused")
    return p_r


def read_regular(path: str | Path, max_bytes: int, root: str | Path | None = None) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them.

    A FIFO, device or socket is refused without blocking (opened ``O_NONBLOCK``, checked with
    ``fstat``), so is a file over the limit, and with ``root`` a path that resolves outside it.

    Raises:
        RejectedModel: ``unreadable file`` with what was wrong.
    """
    path = Path(path)
    if root is not None:
        try:
            resolve_inside(root, path)
        except WeightAtlasError:
            raise RejectedModel(
                "unreadable file", f"{path.name} links outside the model folder"
            ) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise RejectedModel("unreadable file", f"{path.name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedModel("unreadable file", f"{path.name} is not a regular file")
        if st.st_size > max_bytes:
            raise RejectedModel(
                "unreadable file", f"{path.name}: {st.st_size:,} bytes over the {max_bytes:,} limit"
            )
        chunks, left = [], max_bytes + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew while read
            raise RejectedModel(
                "unreadable file", f"{path.name}: over the {max_bytes:,} byte limit"
            )
        return data
    finally:
        os.close(fd)


def is_regular_inside(path: Path, root: Path | None) -> bool:
    """True for a regular file (after symlinks) that, with ``root``, resolves inside it."""
    try:
        if root is not None:
            resolve_inside(root, path)
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, WeightAtlasError):
        return False


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative, so it cannot recurse too deep itself)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return depth


def load_json_bytes(data: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON with a nesting limit.

    Raises:
        ValueError: not JSON, or nested deeper than ``max_depth`` (message names ``what``).
    """
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from None
    if json_depth(obj) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth}")
    return obj


def load_yaml_text(text: str, what: str = "YAML") -> Any:
    """Parse YAML safely: no aliases (no billion laughs), bounded events, libyaml when present.

    Raises:
        HostileInput: aliases, too many nodes, or nested too deeply.
        ValueError: malformed YAML.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if "*" in text:  # an alias is '*name': only then walk the events (C parser) to refuse them
        try:
            for n, event in enumerate(yaml.parse(text, Loader=loader)):
                if isinstance(event, yaml.AliasEvent):
                    raise HostileInput(f"{what} uses YAML aliases, which are not accepted")
                if n > MAX_YAML_EVENTS:
                    raise HostileInput(f"{what} has more than {MAX_YAML_EVENTS:,} YAML events")
        except yaml.YAMLError as e:
            raise ValueError(f"{what} is malformed YAML ({str(e).splitlines()[0]})") from None
    try:
        obj = yaml.load(text, Loader=loader)
    except RecursionError:
        raise HostileInput(f"{what} is nested too deeply") from None
    except yaml.YAMLError as e:
        if "nesting depth" in str(e):
            raise HostileInput(f"{what} is nested too deeply") from None
        raise ValueError(f"{what} is malformed YAML ({str(e).splitlines()[0]})") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise HostileInput(f"{what} is nested deeper than {MAX_JSON_DEPTH}")
    return obj


# ------------------------------------------------------------------------------ terminals

# C0 and C1 controls, DEL, and the bidi embeddings/overrides/isolates that reorder what is shown
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_KEEP_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(m: re.Match[str]) -> str:
    c = m.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: Any, newlines: bool = False) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\u202e``), safe to print.

    Model ids, paths, architecture specs and messages that quote them reach the terminal in
    progress bars, summaries and error lines; an ESC in one would colour, move or clear the
    terminal. With ``newlines`` a ``\\n`` is kept (multi-line summaries); tabs never are.
    """
    text = str(text)
    return (_UNPRINTABLE_KEEP_NL if newlines else _UNPRINTABLE).sub(_escaped, text)


# ------------------------------------------------------------------------------ disk full


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC / EDQUOT / EFBIG, also when wrapped (``__cause__`` / ``__context__``)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen += 1
    return False
