"""Finding and killing what the agent left behind, even outside its process group.

Claude Code starts each Bash tool command in a session of its own (``setsid``), so
killing the agent's process group does not reach them. On SIGTERM the CLI kills them
itself; after a SIGKILL, or when a command detached on purpose (``setsid``, ``nohup
... &``), they survive, reparented to the nearest subreaper. The runner makes itself a
child subreaper (``PR_SET_CHILD_SUBREAPER``; in a pod it is PID 1 anyway), so every
such orphan becomes its child, and :func:`kill_descendants` can find them by walking
``/proc`` from the runner's pid and kill them, whatever their session or group.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_ROUNDS = 5


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux); False when not possible."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parent_map(proc_root: Path = Path("/proc"), zombies: set[int] | None = None) -> dict[int, int]:
    """pid -> parent pid of every live process that can be read; zombies go to ``zombies``."""
    parents: dict[int, int] = {}
    try:
        entries = list(proc_root.iterdir())
    except OSError:
        return parents
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) < 2:
            continue
        try:
            pid, ppid = int(entry.name), int(fields[1])
        except ValueError:
            continue
        if fields[0] in ("Z", "X"):
            if zombies is not None and ppid == os.getpid():
                zombies.add(pid)
            continue
        parents[pid] = ppid
    return parents


def descendants(root: int, parents: dict[int, int], exclude: Iterable[int] = ()) -> list[int]:
    """Every pid below ``root`` in the tree ``parents`` (pure), minus ``exclude`` and theirs."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    skip = set(exclude)
    found: list[int] = []
    stack = [root]
    seen = {root}
    while stack:
        for child in children.get(stack.pop(), []):
            if child in seen or child in skip:
                continue
            seen.add(child)
            found.append(child)
            stack.append(child)
    return found


def children_now() -> set[int]:
    """The pids whose parent is this process (to exclude the runner's own children later)."""
    me = os.getpid()
    return {pid for pid, ppid in parent_map().items() if ppid == me}


def _reap(pids: Iterable[int]) -> None:
    """Collect exited orphans that were reparented to us (subprocess waits only for its own)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def kill_descendants(exclude: Iterable[int] = ()) -> int:
    """SIGKILL every process below this one except the subtrees of ``exclude``.

    ``exclude`` holds the children this process had before the agent started (see
    :func:`children_now`); returns how many processes were killed.
    """
    me = os.getpid()
    killed: set[int] = set()
    excluded = set(exclude)
    for _ in range(_ROUNDS):
        zombies: set[int] = set()
        found = descendants(me, parent_map(zombies=zombies), excluded)
        _reap(zombies - excluded)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.05)
    zombies = set()
    parent_map(zombies=zombies)
    _reap(zombies - excluded)
    if killed:
        log.warning("killed %d process(es) the agent left behind outside its process group", len(killed))
    return len(killed)
