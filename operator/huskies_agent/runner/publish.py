"""Phase ``publish`` (git uid, holds the credentials): checkpoints and the final fenced push.

The publisher runs git only in its private repository, with no global or system config
and no hooks. It takes the agent's work as git objects, by hash, from the checkout's
object store, and makes the commit that is pushed itself: the agent's tree, on top of
the agent's own commits when they descend from the run's start (else on top of the
start), with trailers only the publisher writes. So nothing the agent writes can run
code in the publisher, redirect the push or forge the claim epoch of the branch tip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time

from huskies_agent.pipeline import stages
from huskies_agent.runner.config import RunnerConfig
from huskies_agent.runner.fence import PushReport, fenced_push
from huskies_agent.runner.git import EPOCH_TRAILER, Git
from huskies_agent.runner.handoff import (
    AgentReport,
    CloneInfo,
    RecordError,
    Snapshot,
    State,
    Workspace,
    is_sha,
    read_record,
)
from huskies_agent.runner.result import ExitCode, RunnerError, RunResult

log = logging.getLogger("huskies_agent.runner")

POLL_SECONDS = 1.0
#: After SIGTERM, how long the publisher waits for the agent phase's final report.
HANDOFF_GRACE_SECONDS = 45.0
#: When the agent phase reports a stop, how long the publisher waits for its own SIGTERM.
TERMINATION_CONFIRM_SECONDS = 5.0
_SUMMARY_CHARS = 1500


def commit_message(cfg: RunnerConfig, report: AgentReport | None, word: str) -> str:
    role = stages.ROLE_FOR_STAGE[cfg.stage]
    if word == "checkpoint":
        lines = [f"huskies: {role} work in progress on story {cfg.story_id}", "",
                 f"A checkpoint of the {role} agent's work (stage {cfg.stage}); a later run continues it."]
    else:
        lines = [f"huskies: {role} work on story {cfg.story_id}", ""]
        if word == "completed":
            lines.append(f"The {role} agent finished (stage {cfg.stage}).")
        else:
            why = " ".join((report.failure if report else "unknown").split())[:500]  # one line, whatever it holds
            lines.append(f"The {role} agent did not finish ({why}); this commit keeps its partial work.")
    summary = (report.summary if report else "").strip()
    if summary:
        if len(summary) > _SUMMARY_CHARS:
            summary = summary[:_SUMMARY_CHARS] + " [...]"
        lines += ["", "Agent summary:"]
        lines += ["> " + line if line else ">" for line in summary.splitlines()]
    lines += [
        "",
        f"Huskies-Story: {cfg.story_id}",
        f"Huskies-Stage: {cfg.stage}",
        f"{EPOCH_TRAILER}: {cfg.epoch}",
        f"Huskies-Node: {cfg.node}",
        f"Huskies-Outcome: {word}",
    ]
    return "\n".join(lines) + "\n"


class Publisher:
    """Pushes checkpoints while the agent works, then the final commit; fills ``result``."""

    def __init__(self, cfg: RunnerConfig, git: Git, ws: Workspace, st: State, result: RunResult,
                 stop: threading.Event, wake: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.git = git
        self.ws = ws
        self.st = st
        self.result = result
        self.stop = stop
        self.wake = wake or threading.Event()
        try:
            self.info = read_record(st.clone_record, CloneInfo)
        except RecordError as exc:
            raise RunnerError(ExitCode.INTERNAL, f"the clone step left no record: {exc}") from exc
        #: The remote tip this run last saw as its own: the lease of the next push.
        self.expected = self.info.start_sha
        self.fenced: PushReport | None = None
        self.last_checkpoint = ""
        #: (tree, parent) of the last commit pushed, so an unchanged checkpoint is not pushed again.
        self.last_pushed: tuple[str, str] = ("", "")
        self._pending: tuple[str, str] = ("", "")
        self.last_push = 0.0
        result.base_commit = result.commit = self.info.start_sha

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        started = time.monotonic()
        while True:
            report = self._report()
            if report is not None:
                self.finish(report)
                return
            if self.stop.is_set():
                self._after_stop()
                return
            self._maybe_checkpoint()
            if time.monotonic() - started > self.cfg.heartbeat_timeout_seconds and self._agent_silent():
                self._finish_without_report(ExitCode.AGENT_FAILED,
                                            "the agent container stopped without handing over its work")
                return
            self.wake.wait(POLL_SECONDS)
            self.wake.clear()

    def _after_stop(self) -> None:
        deadline = time.monotonic() + HANDOFF_GRACE_SECONDS
        while time.monotonic() < deadline:
            report = self._report()
            if report is not None:
                self.finish(report, terminated=True)
                return
            self.wake.wait(0.2)
            self.wake.clear()
        self._finish_without_report(ExitCode.TERMINATED, "stopped by a signal before the agent handed over its work")

    def _report(self) -> AgentReport | None:
        try:
            return read_record(self.ws.agent_report, AgentReport)
        except RecordError as exc:
            if self.ws.agent_report.exists() or self.ws.agent_report.is_symlink():
                log.warning("the agent's report is unusable: %s", exc)
                return AgentReport(error_code=int(ExitCode.AGENT_FAILED), error=f"unusable agent report: {exc}")
            return None

    def _agent_silent(self) -> bool:
        try:
            age = time.time() - os.lstat(self.ws.heartbeat).st_mtime
        except OSError:
            return True
        return age > self.cfg.heartbeat_timeout_seconds

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self) -> None:
        if self.fenced is not None:
            return
        try:
            snap = read_record(self.ws.checkpoint, Snapshot)
        except RecordError:
            return
        if snap.sha == self.last_checkpoint or not is_sha(snap.sha):
            return
        if time.monotonic() - self.last_push < self.cfg.checkpoint_interval_seconds / 2:
            return
        self.last_checkpoint = snap.sha
        self.last_push = time.monotonic()
        try:
            self._publish(snap.sha, None, "checkpoint")
        except RunnerError as exc:
            log.warning("checkpoint %s not pushed: %s", snap.sha[:12], exc.message)

    def _latest_checkpoint(self) -> str:
        with contextlib.suppress(RecordError):
            snap = read_record(self.ws.checkpoint, Snapshot)
            if is_sha(snap.sha):
                return snap.sha
        return ""

    # ------------------------------------------------------------------ commit and push
    def _commit(self, snapshot: str, report: AgentReport | None, word: str) -> str | None:
        """The commit to push for ``snapshot``; ``None`` when it changes nothing."""
        repo = self.st.repo
        fork = self.info.fork_sha
        self.git.import_objects(repo, self.ws.objects, snapshot, fork)
        tree = self.git.local(repo, ["rev-parse", f"{snapshot}^{{tree}}"], "reading the snapshot's tree").stdout.strip()
        agent_head = self.git.try_rev_parse(repo, f"{snapshot}^1")
        parent = agent_head if agent_head and self.git.is_ancestor(repo, fork, agent_head) else fork
        if parent != agent_head:
            log.warning("the agent's history does not continue from %s; its tree is committed on top of it",
                        fork[:12])
        fork_tree = self.git.local(repo, ["rev-parse", f"{fork}^{{tree}}"], "reading the start").stdout.strip()
        if parent == fork and tree == fork_tree and self.expected == self.info.start_sha:
            return None
        if word == "checkpoint" and (tree, parent) == self.last_pushed:
            return None  # nothing new since the last checkpoint
        self._pending = (tree, parent)
        return self.git.commit_tree(repo, tree, [parent], commit_message(self.cfg, report, word),
                                    self.cfg.identity)

    def _publish(self, snapshot: str, report: AgentReport | None, word: str) -> PushReport | None:
        commit = self._commit(snapshot, report, word)
        if commit is None:
            return None
        self.result.commit = commit
        push = fenced_push(self.git, self.st.repo, self.cfg.branch, commit, self.expected, self.cfg.epoch)
        if push.status == "pushed":
            self.expected = commit
            self.last_pushed = self._pending
            self.result.pushed = True
            extra = f" (overwrote the stale tip {push.overwrote[:12]})" if push.overwrote else ""
            log.info("pushed %s %s to %s%s", word, commit[:12], self.cfg.branch, extra)
        else:
            self.result.pushed = False
            log.error("%s", push.message)
            if push.status == "fenced":
                self.fenced = push
        return push

    # ------------------------------------------------------------------ the end
    def _finish_without_report(self, code: ExitCode, why: str) -> None:
        latest = self._latest_checkpoint()
        if latest and self.fenced is None:
            with contextlib.suppress(RunnerError):
                self._publish(latest, None, "checkpoint")
        saved = f"; its last checkpoint is {self.expected[:12]}" if self.expected != self.info.start_sha else ""
        self.result.fail(code, why + saved)

    def finish(self, report: AgentReport, *, terminated: bool = False) -> None:
        r = self.result
        r.agent_exit_status, r.turns, r.cost_usd = report.exit_status, report.turns, report.cost_usd
        says_stopped = report.terminated or report.error_code == ExitCode.TERMINATED
        if says_stopped and not self.stop.is_set():
            # The pod's containers get SIGTERM together; give ours a moment to arrive. Only a
            # stop this process saw counts: the agent could claim one to dodge the retry count.
            self.stop.wait(TERMINATION_CONFIRM_SECONDS)
        terminated = terminated or self.stop.is_set()
        if report.error_code and not report.snapshot:
            code = _exit_code(report.error_code, stopped=terminated)
            if terminated and self._latest_checkpoint():
                self._finish_without_report(ExitCode.TERMINATED, f"stopped by a signal; {report.error}")
            else:
                r.fail(code, report.error or f"the agent phase failed ({code.name})")
            return
        if self.fenced is not None:
            r.pushed = False
            r.fail(ExitCode.FENCED, self.fenced.message)
            return
        failure = report.failure if not terminated else (report.failure or "stopped by a signal")
        failure_code, word = failure_of(report)
        if terminated:
            word = "checkpoint"
        push = self._publish(report.snapshot, report, word)
        if push is None and self.expected != self.info.start_sha:
            # Unchanged since the last checkpoint, which stands as this run's push.
            r.commit, r.pushed = self.expected, True
            push = PushReport("pushed", "")
        if push is None:
            if terminated:
                r.fail(ExitCode.TERMINATED, f"{failure}; the agent had changed nothing")
            elif report.failure:
                r.fail(failure_code, report.failure)
            elif self.cfg.role == "coder":
                r.fail(ExitCode.NO_CHANGES,
                       f"the coder agent finished without changing anything on {self.cfg.branch}")
            else:
                log.info("the %s agent changed nothing; nothing to push", self.cfg.role)
                r.exit_code = int(ExitCode.OK)
            return
        if push.status == "pushed":
            if terminated:
                r.fail(ExitCode.TERMINATED, f"{failure}; its work in progress was pushed as {r.commit[:12]}")
            elif report.failure:
                r.fail(failure_code, f"{report.failure}; its partial work was pushed as {r.commit[:12]}")
            else:
                r.exit_code = int(ExitCode.OK)
        elif push.status == "fenced":
            r.fail(ExitCode.FENCED, push.message + (f" (and {failure})" if failure else ""))
        elif terminated:
            r.fail(ExitCode.TERMINATED, f"{failure}; saving its work in progress failed: {push.message}")
        elif report.failure:
            r.fail(failure_code, f"{report.failure}; saving its partial work failed too: {push.message}")
        elif push.status == "rejected":
            r.fail(ExitCode.PUSH_REJECTED, push.message)
        else:
            r.fail(ExitCode.REMOTE_FAILED, push.message)


_OUTCOME_WORD = re.compile(r"^[a-z][a-z-]{0,31}$")


def failure_of(report: AgentReport) -> tuple[ExitCode, str]:
    """The exit code and ``Huskies-Outcome`` word for the agent's outcome, both bounded.

    The word goes into a trailer, so it is one short lowercase word (no line break could
    add a forged ``Huskies-Claim-Epoch`` to the tip); the code is a failure the agent may
    report, never success, a fencing or a stop.
    """
    default = ExitCode.AGENT_TIMEOUT if report.timed_out else ExitCode.AGENT_FAILED
    if not report.failure:
        return ExitCode.OK, "completed"
    code = _exit_code(report.failure_code, stopped=False) if report.failure_code else default
    if code is ExitCode.OK or code not in _AGENT_FAILURES:
        code = default
    word = report.outcome if _OUTCOME_WORD.match(report.outcome) and report.outcome != "completed" else ""
    return code, word or ("agent-timeout" if report.timed_out else "agent-failed")


#: Failures the agent's run may end with (the agent phase chooses; the agent's uid writes it).
_AGENT_FAILURES = frozenset(
    c for c in ExitCode if c.name.startswith("AGENT_") or c in (ExitCode.NO_CHANGES, ExitCode.GIT_FAILED)
)


def _exit_code(value: int, *, stopped: bool) -> ExitCode:
    try:
        code = ExitCode(value)
    except ValueError:
        return ExitCode.AGENT_FAILED
    # The agent's uid wrote this: it may not claim success, a fencing the publisher did not
    # see, or a stop the publisher did not get (TERMINATED is not counted as a failure).
    if code in (ExitCode.OK, ExitCode.FENCED) or (code is ExitCode.TERMINATED and not stopped):
        return ExitCode.AGENT_FAILED
    return code
