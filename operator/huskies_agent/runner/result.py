"""The runner's result: exit codes and the one-line JSON termination message.

Exit codes (defined in :mod:`huskies_agent.contract`, also in ``docs/runner.md``; the
operator maps them to pipeline outcomes):

====  ===============  ==================================================================
code  name             meaning
====  ===============  ==================================================================
0     OK               the story branch was pushed, or a QA/merge run needed no change
1     INTERNAL         unexpected runner error (a bug); see the pod log
2     (usage)          unknown command-line option (argparse; no termination message)
10    INVALID_INPUT    bad story id, stage, epoch, node, repo URL, base branch or limit
11    STORY_NOT_FOUND  no .huskies/work/<stage>/<id>[_*].md in any stage folder
12    REMOTE_FAILED    remote unreachable, auth/clone/fetch failed, base branch missing
13    PUSH_REJECTED    the remote refused the push for a reason other than fencing (hook)
14    FENCED           the branch moved to a tip of an equal/higher/unknown claim epoch
15    AGENT_TIMEOUT    the agent ran past HUSKIES_AGENT_TIMEOUT_SECONDS and was killed
16    AGENT_FAILED     the agent exited non-zero, reported is_error, or could not start
17    NO_CHANGES       a coder run (2_current) ended without changing anything
18    GIT_FAILED       a local git step failed (checkout, commit, status)
19    TERMINATED       the runner got SIGTERM/SIGINT (pod deleted); work in progress is pushed
20    AGENT_AUTH       the model API refused the key (401/403): not the story's failure
21    AGENT_UNAVAILABLE the model API stayed unavailable (429, 529, 5xx, cut streams) after
                     the CLI's own retries: retry later, not the story's failure
22    AGENT_BUDGET     the agent reached --max-budget-usd; counted like a failure
====  ===============  ==================================================================

After an agent timeout or failure the runner still commits and pushes (fenced) what
the agent left, so a retry resumes from it; the exit code stays the agent's unless the
push was fenced, in which case it is FENCED. 137/143 are left to the kernel (OOM kill,
SIGKILL after the grace period); those come with no termination message.

The termination message is one line of ASCII JSON, at most :data:`MAX_MESSAGE_BYTES`::

    {"story_id": str, "stage": str, "branch": str, "commit": str, "base_commit": str,
     "pushed": bool, "exit_code": int, "error": str, "agent_exit_status": int|null,
     "turns": int|null, "cost_usd": float|null, "epoch": int|null}

``base_commit`` is the remote branch tip the run started from ("" when the branch did
not exist); ``commit`` is the commit this run made, pushed or not (``pushed`` says
which), or ``base_commit`` when it made none.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huskies_agent.contract import MAX_MESSAGE_BYTES, ExitCode

__all__ = ["MAX_MESSAGE_BYTES", "ExitCode", "RunResult", "RunnerError", "Terminated", "write_termination_log"]

log = logging.getLogger(__name__)

_FIELD_CAP = 256
_ERROR_CAP = 2000


class Terminated(Exception):
    """The runner was asked to stop (SIGTERM/SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunnerError(Exception):
    """A failure that ends the run with a specific exit code and message."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RunResult:
    story_id: str = ""
    stage: str = ""
    branch: str = ""
    commit: str = ""
    base_commit: str = ""
    pushed: bool = False
    exit_code: int = int(ExitCode.INTERNAL)
    error: str = ""
    agent_exit_status: int | None = None
    turns: int | None = None
    cost_usd: float | None = None
    epoch: int | None = None

    def fail(self, code: ExitCode, message: str) -> None:
        self.exit_code = int(code)
        self.error = message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, limit: int = MAX_MESSAGE_BYTES) -> str:
        """One line of ASCII JSON no longer than ``limit`` bytes (long strings are cut)."""
        data = self.to_dict()
        for key, value in data.items():
            if isinstance(value, str):
                data[key] = _cut(value, _ERROR_CAP if key == "error" else _FIELD_CAP)
        text = _dumps(data)
        if len(text) <= limit:
            return text
        # Keep the longest prefix of the error that fits (escapes make lengths non-linear).
        error = data["error"]
        low, high = 0, len(error)
        while low < high:
            mid = (low + high + 1) // 2
            if len(_dumps({**data, "error": _cut(error, mid)})) <= limit:
                low = mid
            else:
                high = mid - 1
        data["error"] = _cut(error, low)
        return _dumps(data)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def _cut(value: str, cap: int) -> str:
    if len(value) <= cap:
        return value
    if cap <= 3:
        return value[:cap]
    return value[: cap - 3] + "..."


def write_termination_log(path: str, line: str) -> None:
    """Write the result where Kubernetes reads the termination message; warn if impossible."""
    if not path:
        return
    try:
        target = Path(path)
        if not target.parent.is_dir():
            log.warning("termination log %s: directory does not exist; not written", path)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        log.warning("termination log %s could not be written: %s", path, exc)
