"""What the three phases of a run leave for each other, and how they read it safely.

The workspace (``HUSKIES_WORKDIR``) is shared with the agent, so everything in it is
hostile to the publisher: the publisher reads only small JSON records from ``out/``,
opened without following symlinks, as regular files, bounded in size, and git objects
(by hash) from the agent's checkout. The state directory (``HUSKIES_STATE_DIR``) is the
publisher's own: the agent's container never mounts it.

Workspace layout::

    handoff/seed.git     bare repo the clone phase fills (the agent clones from it)
    handoff/clone.json   what the agent needs to know (resumed or new branch, base present)
    repo/                the agent's checkout (its cwd)
    home/                the agent's HOME
    out/checkpoint.json  the latest snapshot of the work in progress (agent phase)
    out/agent.json       the agent phase's final report: outcome and final snapshot
    out/heartbeat        touched while the agent phase lives

State layout: ``repo.git`` (the publisher's private repository), ``clone.json``
(start sha, fork sha), ``cred/`` (credential helper, ssh key copy), ``home/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

MAX_RECORD_BYTES = 64 * 1024
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class RecordError(Exception):
    """A record in the workspace is missing, not a regular file, too big or not valid JSON."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def handoff(self) -> Path:
        return self.root / "handoff"

    @property
    def seed(self) -> Path:
        return self.handoff / "seed.git"

    @property
    def clone_info(self) -> Path:
        return self.handoff / "clone.json"

    @property
    def checkout(self) -> Path:
        return self.root / "repo"

    @property
    def objects(self) -> Path:
        return self.checkout / ".git" / "objects"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.json"

    @property
    def agent_report(self) -> Path:
        return self.out / "agent.json"

    @property
    def heartbeat(self) -> Path:
        return self.out / "heartbeat"


@dataclass(frozen=True)
class State:
    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "repo.git"

    @property
    def clone_record(self) -> Path:
        return self.root / "clone.json"

    @property
    def cred(self) -> Path:
        return self.root / "cred"

    @property
    def home(self) -> Path:
        return self.root / "home"


@dataclass(frozen=True)
class CloneInfo:
    """Written by the clone phase. In the state dir it is trusted; in the workspace, a hint."""

    #: Remote tip of the story branch at clone time ("" when the branch did not exist).
    start_sha: str
    #: The commit the checkout starts at (start_sha, or the base branch's tip).
    fork_sha: str
    resumed: bool
    base_present: bool


@dataclass(frozen=True)
class Snapshot:
    """A commit of the agent's tree (made in the agent's repo) for the publisher to take."""

    sha: str
    seq: int = 0


@dataclass(frozen=True)
class AgentReport:
    """The agent phase's last word. Written by the agent's uid: data, never trusted for control."""

    snapshot: str = ""
    #: Set when the phase failed before or without a snapshot (ExitCode value and reason).
    error_code: int = 0
    error: str = ""
    started: bool = False
    exit_status: int | None = None
    timed_out: bool = False
    terminated: bool = False
    #: Why the agent's run counts as failed ("" when it did not), the exit code for it
    #: (0: derived from ``timed_out``) and the commit's ``Huskies-Outcome`` word ("": derived).
    failure: str = ""
    failure_code: int = 0
    outcome: str = ""
    turns: int | None = None
    cost_usd: float | None = None
    summary: str = ""


T = TypeVar("T")


def is_sha(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA.match(value))


def write_record(path: Path, record: Any, *, mode: int = 0o644) -> None:
    """Write a dataclass as JSON, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(asdict(record), ensure_ascii=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_bytes_safely(path: Path, limit: int = MAX_RECORD_BYTES) -> bytes:
    """A regular file's bytes, never through a symlink, a FIFO or a device; at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise RecordError(f"{path.name} does not exist") from exc
    except OSError as exc:
        raise RecordError(f"{path.name} cannot be opened ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RecordError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise RecordError(f"{path.name} is larger than {limit} bytes")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise RecordError(f"{path.name} is larger than {limit} bytes")
    return data


def read_record(path: Path, kind: type[T]) -> T:
    """Read a record written by :func:`write_record`; unknown keys are ignored, wrong types refused."""
    raw = read_bytes_safely(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecordError(f"{path.name} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise RecordError(f"{path.name} is not a JSON object")
    values: dict[str, Any] = {}
    for f in fields(kind):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        if not _type_ok(value, str(f.type)):
            raise RecordError(f"{path.name}: field {f.name} has the wrong type")
        values[f.name] = value
    try:
        return kind(**values)
    except TypeError as exc:
        raise RecordError(f"{path.name}: {exc}") from exc


def _type_ok(value: object, hint: str) -> bool:
    allowed: list[type | None] = []
    for part in hint.replace(" ", "").split("|"):
        allowed.append({"str": str, "int": int, "bool": bool, "float": float, "None": None}.get(part, object))
    for kind in allowed:
        if kind is None and value is None:
            return True
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind in (str, bool, object) and kind is not None and isinstance(value, kind):
            return True
    return False


def empty_dir(path: Path, mode: int = 0o700) -> None:
    """Make ``path`` an empty directory; a mount point (an emptyDir) is emptied, not removed.

    ``mode`` is set when this uid owns the directory. A kubelet makes an emptyDir's mount point
    root's, mode 0777 (the pod sets no fsGroup, k8s/buildpod.py), and only its owner may chmod it:
    such a directory keeps its mode, and what keeps it private is which containers mount it.
    """
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
    if path.stat().st_uid == os.geteuid():
        path.chmod(mode)
