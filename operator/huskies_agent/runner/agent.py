"""Running the Claude Code CLI non-interactively and reading its stream-json output.

The command is ``claude -p --output-format stream-json --verbose --permission-mode
bypassPermissions [--model M] [--max-turns N] [--max-budget-usd B]``; the prompt goes
on stdin (no argument-length limit, not visible in ``ps``). The agent gets its own
process group: on timeout (or when the runner is told to stop) the whole group is
killed, and whatever is left in it after the agent exits is killed too, as is every
process the agent detached into a session of its own (see :mod:`.reaper`). Each output
line is redacted and copied to the runner's stdout (the pod log); the last
``{"type": "result", ...}`` line gives turns, cost and ``is_error``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from huskies_agent.runner.proc import kill_group
from huskies_agent.runner.reaper import become_subreaper, children_now, kill_descendants
from huskies_agent.runner.redact import Redactor

log = logging.getLogger(__name__)

_READER_JOIN_SECONDS = 10.0


@dataclass
class AgentOutcome:
    #: Exit status (negative: killed by that signal); ``None`` when it never started.
    exit_status: int | None = None
    timed_out: bool = False
    started: bool = False
    start_error: str = ""
    result_seen: bool = False
    is_error: bool = False
    subtype: str = ""
    turns: int | None = None
    cost_usd: float | None = None
    #: The agent's final message (``result`` field), redacted.
    summary: str = ""
    duration_seconds: float = 0.0
    #: The HTTP status of the Messages API error the agent gave up on (``api_error_status``).
    api_error_status: int | None = None
    #: Why the CLI's loop ended (``terminal_reason``: completed, api_error, max_turns, ...).
    terminal_reason: str = ""
    #: The CLI's own error texts (``errors``), redacted, e.g. "Reached maximum budget ($5)".
    errors: tuple[str, ...] = ()
    #: Processes the agent left behind (e.g. in their own session) that the runner killed.
    leftovers_killed: int = 0

    @property
    def succeeded(self) -> bool:
        return self.started and not self.timed_out and self.exit_status == 0 and not self.is_error

    def failure(self) -> str:
        """Why the agent run counts as failed ("" when it did not fail)."""
        if not self.started:
            return f"the agent could not be started: {self.start_error}"
        if self.timed_out:
            return f"the agent was killed after the {self.duration_seconds:.0f}s timeout"
        if self.exit_status != 0:
            status = self.exit_status if self.exit_status is not None else "unknown"
            detail = f"; {self.subtype}" if self.subtype else ""
            return f"the agent exited with status {status}{detail}"
        if self.is_error:
            return f"the agent reported an error ({self.subtype or 'is_error'})"
        return ""


def claude_command(
    claude_bin: str, *, model: str = "", max_turns: int | None = None, max_budget_usd: float | None = None,
) -> list[str]:
    cmd = [
        claude_bin, "-p",
        "--output-format", "stream-json",
        "--verbose",
        "--permission-mode", "bypassPermissions",
    ]
    if model:
        cmd += ["--model", model]
    if max_turns:
        cmd += ["--max-turns", str(max_turns)]
    if max_budget_usd:
        cmd += ["--max-budget-usd", f"{max_budget_usd:g}"]
    return cmd


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _StreamReader:
    """Copies the agent's output to ``sink`` line by line and keeps the last result event."""

    def __init__(self, stream: IO[str], sink: TextIO, redactor: Redactor) -> None:
        self.stream = stream
        self.sink = sink
        self.redactor = redactor
        self.result: dict[str, Any] | None = None
        self.lines = 0
        #: Set when the runner stops listening (a process that escaped the group keeps the pipe open).
        self.detached = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="agent-output", daemon=True)

    def _pump(self) -> None:
        for line in self.stream:
            if self.detached.is_set():
                return
            self.lines += 1
            self._note(line)
            with contextlib.suppress(OSError, ValueError):
                self.sink.write(self.redactor.redact(line if line.endswith("\n") else line + "\n"))
                self.sink.flush()

    def _note(self, line: str) -> None:
        text = line.strip()
        if not (text.startswith("{") and '"result"' in text):
            return
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("type") == "result":
            self.result = event


def run_agent(
    command: Sequence[str],
    *,
    prompt: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    redactor: Redactor,
    sink: TextIO | None = None,
) -> AgentOutcome:
    """Run the agent to completion or timeout; never raises for agent failures."""
    outcome = AgentOutcome()
    sink = sink if sink is not None else sys.stdout
    started = time.monotonic()
    # Tool commands run in sessions of their own; as a subreaper the runner inherits them if orphaned.
    if not become_subreaper():
        log.warning("could not become a child subreaper; processes the agent detaches may outlive it")
    before = children_now()
    try:
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        outcome.start_error = redactor.redact(str(exc))
        return outcome
    outcome.started = True
    assert proc.stdin is not None and proc.stdout is not None
    reader = _StreamReader(proc.stdout, sink, redactor)
    reader.thread.start()
    writer = threading.Thread(target=_feed, args=(proc.stdin, prompt), name="agent-prompt", daemon=True)
    writer.start()
    try:
        try:
            outcome.exit_status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            outcome.timed_out = True
            log.warning("agent ran past its %gs timeout; killing its process group", timeout)
            kill_group(proc)
            outcome.exit_status = proc.poll()
    except BaseException:
        kill_group(proc, grace=2.0)
        raise
    finally:
        # Background processes the agent left in its group must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        outcome.leftovers_killed = kill_descendants(exclude=before)
        reader.thread.join(_READER_JOIN_SECONDS)
        if reader.thread.is_alive():
            log.warning("the agent's output stays open after it exited; no longer copying it")
            reader.detached.set()
        outcome.duration_seconds = time.monotonic() - started
    _apply_result(outcome, reader.result, redactor)
    return outcome


def _feed(stdin: IO[str], prompt: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        stdin.write(prompt)
    with contextlib.suppress(OSError, ValueError):
        stdin.close()


def _apply_result(outcome: AgentOutcome, event: dict[str, Any] | None, redactor: Redactor) -> None:
    if event is None:
        return
    outcome.result_seen = True
    outcome.is_error = bool(event.get("is_error"))
    outcome.subtype = str(event.get("subtype") or "")[:100]
    turns = _number(event.get("num_turns"))
    outcome.turns = int(turns) if turns is not None else None
    outcome.cost_usd = _number(event.get("total_cost_usd"))
    status = _number(event.get("api_error_status"))
    outcome.api_error_status = int(status) if status is not None else None
    outcome.terminal_reason = str(event.get("terminal_reason") or "")[:100]
    errors = event.get("errors")
    if isinstance(errors, list):
        outcome.errors = tuple(redactor.redact(str(e))[:300] for e in errors[:5])
    summary = event.get("result")
    if isinstance(summary, str):
        outcome.summary = redactor.redact(summary)
