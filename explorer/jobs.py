"""Background stage runs for the explorer: a ``weightatlas`` subprocess plus its progress file.

The app calls :func:`start_sample` with a :class:`SampleRequest`; it starts
``weightatlas sample ATLAS ... --out DIR --progress-file P`` in its own process group, the app
keeps the :class:`Job` in the session and polls ``P`` (atomic JSON ``{fraction, message, done,
error, outputs}``). The script thread never blocks on the run, a rerun finds the job again,
and cancel ends exactly that process group.

The app never writes into an atlas (the embedded demo may sit in a read-only install). Its
generated models and job files go to a per-atlas folder of the user's workspace:

    $WEIGHTATLAS_WORKSPACE/<atlas name>-<hash of its path>/generated/
    (default workspace: $XDG_CACHE_HOME/weightatlas/workspace, i.e. ~/.cache/weightatlas/workspace)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atlas import WORKSPACE_ENV, Atlas, workspace_root  # noqa: F401 (re-exported)
from core.errors import WeightAtlasError
from core.generation.config import DEFAULT_SAMPLE_PRESET, SAMPLE_PRESETS

LOG_TAIL = 2000


@dataclass
class Job:
    """One background run: its command, process, progress and log files."""

    cmd: list[str]
    progress_file: Path
    log_file: Path
    started: float
    proc: subprocess.Popen | None = field(default=None, repr=False)
    cancelled: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def returncode(self) -> int | None:
        """Exit code, or None while running."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        """Progress as ``{fraction, message, done, error, outputs, running, seconds}``.

        A process that exited without writing ``done`` reports its exit code and log tail as
        the error; a cancelled one says so.
        """
        state: dict[str, Any] = {"fraction": 0.0, "message": "starting", "done": False}
        state.update({"error": None, "outputs": []})
        try:
            state.update(json.loads(self.progress_file.read_text()))
        except (OSError, ValueError):
            pass
        rc = self.returncode()
        state["running"] = rc is None and self.proc is not None
        state["seconds"] = time.time() - self.started
        if self.cancelled:
            state.update(done=True, error="cancelled")
        elif rc is not None and rc != 0 and not state.get("error"):
            tail = self.log_tail().strip().splitlines()
            state.update(done=True, error=tail[-1] if tail else f"exited with code {rc}")
        elif rc == 0 and not state.get("done"):
            state["done"] = True
        return state

    def reap(self, timeout: float = 5.0) -> None:
        """Wait for a finished run's process to exit (no zombie left behind)."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.cancel()

    def cancel(self) -> None:
        """Terminate the run's process group (SIGTERM, then SIGKILL after 5 s)."""
        self.cancelled = True
        if not self.running():
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def atlas_workspace(atlas: str | Path) -> Path:
    """This atlas' folder in the workspace: ``NAME-HASH`` (hash of the atlas' resolved path)."""
    root = Atlas.open(atlas).root.resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-.") or "atlas"
    return workspace_root() / f"{name[:40]}-{key}"


def generated_dir(atlas: str | Path) -> Path:
    """Where the app writes generated models of ``atlas`` (created; never inside the atlas).

    Raises:
        WeightAtlasError: the folder resolves inside the atlas (a workspace set to the atlas).
    """

    out = atlas_workspace(atlas) / "generated"
    root = Atlas.open(atlas).root.resolve()
    if out.resolve().is_relative_to(root):
        raise WeightAtlasError(
            f"the workspace {workspace_root()} lies inside the atlas {root}; "
            f"set {WORKSPACE_ENV} to a folder outside it"
        )
    try:  # created, and written to once: a read-only mount, a file on the way or /proc fail here
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WeightAtlasError(
            f"the workspace {workspace_root()} is not usable ({e.strerror or type(e).__name__})"
        ) from None
    return out


@dataclass(frozen=True)
class SampleRequest:
    """One generation run as the Generate page asks for it (see ``weightatlas sample``).

    Attributes:
        arch: ``zoo:<family>``, ``timm:<name>`` or ``hf:<model dir>``.
        n: draws per round (K).
        keep: models kept (M).
        seed: seed of prompts, draws and conditioning.
        task: target task (None: the architecture's own).
        width, depth: zoo family size (None: the atlas' most common).
        prompts: atlas model ids used as prompts (empty: freshly trained ones).
    """

    arch: str
    n: int = SAMPLE_PRESETS[DEFAULT_SAMPLE_PRESET]["n"]
    keep: int = SAMPLE_PRESETS[DEFAULT_SAMPLE_PRESET]["keep"]
    seed: int = 0
    task: str | None = None
    width: int | None = None
    depth: int | None = None
    prompts: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The ``weightatlas sample`` arguments of this request (after the atlas)."""
        args = ["--arch", self.arch, "--n", str(self.n), "--keep", str(self.keep)]
        args += ["--seed", str(self.seed)]
        if self.task:
            args += ["--task", self.task]
        if self.width is not None:
            args += ["--width", str(self.width)]
        if self.depth is not None:
            args += ["--depth", str(self.depth)]
        if self.prompts:
            args += ["--prompts", ",".join(self.prompts)]
        return args


def start_sample(
    atlas: str | Path,
    request: SampleRequest,
    out: str | Path | None = None,
    estimate: dict[str, Any] | None = None,
) -> Job:
    """Start ``request`` in the background; models go to ``out`` (default :func:`generated_dir`).

    ``estimate``: the ``estimate_sample`` result the page showed; the run reports it instead of
    timing the machine again (one estimate on the page and in the job).

    Raises:
        ValueError: ``keep`` exceeds ``n`` or either is below 1.
    """
    if request.n < 1 or request.keep < 1 or request.keep > request.n:
        raise ValueError(f"need 1 <= keep ({request.keep}) <= n ({request.n})")
    out_dir = Path(out) if out is not None else generated_dir(atlas)
    args = [*request.argv(), "--out", str(out_dir)]
    if estimate is not None:
        jobs = out_dir / ".jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        path = jobs / f"estimate-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(estimate))
        args += ["--estimate-file", str(path)]
    return start_stage(atlas, "sample", args, jobs_dir=out_dir / ".jobs")


STARTUP_PROBE = """
import sys, time
t0 = time.perf_counter()
import core.cli
t1 = time.perf_counter()
from core.zoos.tasks import get_task
if sys.argv[1:]:
    get_task(sys.argv[1]).split("train")
t2 = time.perf_counter()
import torch
from core.models.optim import adamw
adamw([torch.nn.Parameter(torch.zeros(1))], 1e-3)
print(t1 - t0, t2 - t1, time.perf_counter() - t2)
"""


def startup_seconds(task: str | None = None) -> dict[str, float]:
    """Measured seconds a fresh ``weightatlas`` process pays before its work (one probe process
    timed now): ``import`` (the CLI and its libraries), ``task`` (loading ``task``'s data: the
    tabular ones import scikit-learn), ``optimizer`` (the first AdamW imports torch's compiler
    stack: 8-13 s on a loaded 2-core machine; only runs that train fresh prompts pay it) and
    ``process`` (interpreter start: the rest of the wall time)."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p
    )}  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, *([task] if task else [])],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - t0
    try:
        imp, data, opt = (float(v) for v in out.stdout.split()[-3:])
    except ValueError:
        return {"import": wall, "task": 0.0, "optimizer": 0.0, "process": 0.0}
    rest = max(wall - imp - data - opt, 0.0)
    return {"import": imp, "task": data, "optimizer": opt, "process": rest}


def start_stage(
    atlas: str | Path,
    stage: str,
    args: list[str],
    env: dict[str, str] | None = None,
    jobs_dir: str | Path | None = None,
) -> Job:
    """Start ``weightatlas STAGE ATLAS ARGS --progress-file P`` in the background.

    Args:
        atlas: an atlas directory.
        stage: the CLI subcommand (``sample``).
        args: further arguments (strings, passed without a shell).
        env: extra environment variables.
        jobs_dir: where the progress and log files go (default: the atlas' workspace folder's
            ``.jobs``).
    """
    a = Atlas.open(atlas)
    jobs = Path(jobs_dir) if jobs_dir is not None else atlas_workspace(a.root) / ".jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    progress, log = jobs / f"{stage}-{stamp}.json", jobs / f"{stage}-{stamp}.log"
    cmd = [
        sys.executable,
        "-m",
        "core.cli",
        stage,
        str(a.root),
        *args,
        "--progress-file",
        str(progress),
    ]
    repo = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo), full_env.get("PYTHONPATH", "")) if p
    )
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    return Job(cmd=cmd, progress_file=progress, log_file=log, started=time.time(), proc=proc)
