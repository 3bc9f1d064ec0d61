"""The one supervisor of development child processes (control-plane components, rendezvous, operators).

Each process runs in its own session (so a signal reaches its whole process group), appends its
stdout+stderr to ``<log_dir>/<name>.log`` framed by "started"/"stopped" lines, and is stopped for
sure: SIGTERM, then SIGKILL after a timeout. With ``die_with_parent`` the kernel also kills it when
the starting thread dies without cleaning up (``setpriv --pdeathsig KILL``, main thread only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Proc", "tail"]


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file (read from its last 256 kB)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data[-256_000:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """A child process with its output in a log file, stopped for sure at the end."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.popen: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_at = 0.0

    def start(self) -> Proc:
        """Start (or restart) the process; raises OSError when the executable cannot run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = list(self.argv)
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with self.log_path.open("ab") as log:
            log.write(f"# {time.strftime('%H:%M:%S')} started: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env, cwd=self.cwd, start_new_session=True)
        self.returncode = None
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None (also None before start)."""
        if self.popen is not None:
            self.returncode = self.popen.poll()
        return self.returncode

    def wait(self, timeout: float) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} is not running")
        self.returncode = self.popen.wait(timeout)
        return self.returncode

    def wait_or_none(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit code, or None while it still runs."""
        if self.popen is None:
            return self.returncode
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: int) -> None:
        """Signal the process group (start_new_session: the child's pid is its group id)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; a no-op when not running."""
        if self.popen is None:
            return
        try:
            if self.popen.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    self.popen.wait(10)
        finally:
            self._stopped()

    def kill(self) -> None:
        """SIGKILL at once: no chance to clean up (for crash tests)."""
        if self.popen is not None:
            self.signal(signal.SIGKILL)
            self.popen.wait(10)
            self._stopped()

    def _stopped(self) -> None:
        assert self.popen is not None
        self.returncode = self.popen.returncode
        self.popen = None
        with contextlib.suppress(OSError), self.log_path.open("ab") as log:
            log.write(f"# {time.strftime('%H:%M:%S')} stopped (exit {self.returncode})\n".encode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int) -> str:
        return tail(self.log_path, lines)
