"""Background stage runs for the explorer: a ``weightatlas`` subprocess plus its progress file.

The app starts ``weightatlas sample ATLAS ... --progress-file P`` in its own process group,
keeps the :class:`Job` in the session, and polls ``P`` (atomic JSON ``{fraction, message, done,
error, outputs}``). The script thread never blocks on the run, a rerun finds the job again,
and cancel ends exactly that process group. Files go under ``ATLAS/generated/.jobs/`` only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atlas import Atlas

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


def start_stage(
    atlas: str | Path, stage: str, args: list[str], env: dict[str, str] | None = None
) -> Job:
    """Start ``weightatlas STAGE ATLAS ARGS --progress-file P`` in the background.

    Args:
        atlas: an atlas directory; progress and log files go to ``ATLAS/generated/.jobs/``.
        stage: the CLI subcommand (``sample``).
        args: further arguments (strings, passed without a shell).
        env: extra environment variables.
    """
    a = Atlas.open(atlas)
    jobs = a.generated_dir / ".jobs"
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
