"""Phase ``agent`` (agent uid, no git credentials): check out, prompt, run Claude Code,
and hand the work to the publisher as snapshot commits in the checkout's object store.

Everything here runs with the agent's uid and may be tampered with by the agent; the
publisher treats what it leaves (``out/*.json``, the objects) as data only.
A background ticker touches ``out/heartbeat`` and, every checkpoint interval, records
a snapshot of the work in progress in ``out/checkpoint.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from huskies_agent.runner.agent import AgentOutcome, claude_command, run_agent
from huskies_agent.runner.config import RunnerConfig
from huskies_agent.runner.credentials import agent_env
from huskies_agent.runner.git import Git
from huskies_agent.runner.handoff import (
    AgentReport,
    CloneInfo,
    RecordError,
    Snapshot,
    Workspace,
    empty_dir,
    read_record,
    write_record,
)
from huskies_agent.runner.prompt import PromptInputs, build_prompt
from huskies_agent.runner.redact import Redactor
from huskies_agent.runner.result import ExitCode, RunnerError, Terminated
from huskies_agent.runner.story import find_story
from huskies_agent.runner.verdict import verdict_of

log = logging.getLogger("huskies_agent.runner")

SNAPSHOT_REF = "refs/huskies/snapshot"
HEARTBEAT_SECONDS = 5.0


class Snapshotter:
    """Commits the checkout's whole tree (with a private index) on top of its HEAD."""

    def __init__(self, git: Git, ws: Workspace, cfg: RunnerConfig) -> None:
        self.git = git
        self.ws = ws
        self.identity = cfg.identity
        self.lock = threading.Lock()
        self.seq = 0

    def take(self) -> str:
        with self.lock:
            checkout = self.ws.checkout
            index = self.ws.out / "snapshot.index"
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
            env = {**self.git.env, "GIT_INDEX_FILE": str(index), **self.identity}
            head = self.git.try_rev_parse(checkout, "HEAD")
            read = ["read-tree", head] if head else ["read-tree", "--empty"]
            for args in (read, ["add", "-A"]):
                self.git.checked(args, cwd=checkout, env=env, code=ExitCode.GIT_FAILED, what=f"git {args[0]}")
            tree = self.git.checked(["write-tree"], cwd=checkout, env=env, code=ExitCode.GIT_FAILED,
                                    what="git write-tree").stdout.strip()
            sha = self.git.commit_tree(checkout, tree, [head] if head else [], "huskies snapshot\n", self.identity)
            self.git.update_ref(checkout, SNAPSHOT_REF, sha)
            self.seq += 1
            return sha


class Ticker:
    """Heartbeat every few seconds; a checkpoint snapshot every ``interval`` once the agent runs."""

    def __init__(self, ws: Workspace, interval: float, snapshot: Callable[[], str]) -> None:
        self.ws = ws
        self.interval = interval
        self.snapshot = snapshot
        self.agent_running = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)

    def __enter__(self) -> Ticker:
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def _beat(self) -> None:
        with contextlib.suppress(OSError):
            self.ws.heartbeat.touch(mode=0o644)
            os.utime(self.ws.heartbeat)

    def _run(self) -> None:
        last = time.monotonic()
        seq = 0
        while not self.stop.wait(min(HEARTBEAT_SECONDS, self.interval)):
            self._beat()
            if not self.agent_running.is_set() or time.monotonic() - last < self.interval:
                continue
            last = time.monotonic()
            try:
                sha = self.snapshot()
            except RunnerError as exc:
                log.warning("checkpoint snapshot failed: %s", exc.message)
                continue
            seq += 1
            with contextlib.suppress(OSError):
                write_record(self.ws.checkpoint, Snapshot(sha=sha, seq=seq))
            log.info("checkpoint snapshot %d: %s", seq, sha[:12])


def _home_dir(environ: Mapping[str, str], ws: Workspace) -> Path:
    home = environ.get("HOME", "")
    for candidate in ([Path(home)] if home else []) + [ws.home]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise RunnerError(ExitCode.INVALID_INPUT, f"no writable home directory (HOME={home!r}, workdir={ws.root})")


def _fresh_checkout(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():  # a restarted container finds its previous checkout
        shutil.rmtree(path)


def prepare_out(ws: Workspace) -> None:
    try:
        empty_dir(ws.out, 0o755)
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"workdir {ws.root} is not usable: {exc}") from exc


def run_agent_phase(cfg: RunnerConfig, ws: Workspace, environ: Mapping[str, str], redactor: Redactor,
                    sink: TextIO) -> AgentReport:
    """Check out, run the agent, snapshot; returns the report (the caller writes it, also on errors)."""
    try:
        info = read_record(ws.clone_info, CloneInfo)
    except RecordError as exc:
        raise RunnerError(ExitCode.INTERNAL, f"the clone step left no usable checkout: {exc}") from exc
    try:
        _fresh_checkout(ws.checkout)
        home = _home_dir(environ, ws)
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"workdir {ws.root} is not usable: {exc}") from exc
    base_env = {**environ, "HOME": str(home)}
    git = Git(url="", env=_git_env(base_env), redactor=redactor, timeout=cfg.git_timeout_seconds)
    git.clone_local(ws.seed, ws.checkout, branch=cfg.branch)
    checkout = ws.checkout
    git.local(checkout, ["config", "user.name", cfg.author_name], "setting the commit author")
    git.local(checkout, ["config", "user.email", cfg.author_email], "setting the commit author")

    story = find_story(checkout, cfg.story_id, cfg.stage)
    note = story.fallback_note(cfg.stage)
    if note:
        log.warning("%s", note)
    log.info("story file %s (%d characters)", story.relative, len(story.text))
    prompt = build_prompt(PromptInputs(
        story_id=cfg.story_id, stage=cfg.stage, branch=cfg.branch, base_branch=cfg.base_branch,
        epoch=cfg.epoch, story_path=story.relative, story_text=story.text,
        story_truncated=story.truncated, fallback_note=note, resumed=info.resumed,
    ))
    command = claude_command(
        cfg.claude_bin, model=cfg.model, max_turns=cfg.max_turns, max_budget_usd=cfg.max_budget_usd,
    )
    log.info("starting the %s agent: %s", cfg.role, " ".join(command))
    snapshotter = Snapshotter(git, ws, cfg)
    terminated: Terminated | None = None
    outcome = AgentOutcome()
    with Ticker(ws, cfg.checkpoint_interval_seconds, snapshotter.take) as ticker:
        ticker.agent_running.set()
        try:
            outcome = run_agent(
                command, prompt=prompt, cwd=checkout, env=agent_env(base_env, home=home),
                timeout=cfg.agent_timeout_seconds, redactor=redactor, sink=sink,
            )
        except Terminated as exc:  # a stop signal: the agent was killed; save what it left
            terminated = exc
        ticker.agent_running.clear()
    verdict = verdict_of(outcome, cfg.max_budget_usd, cfg.max_turns)
    log.info(
        "agent finished: %s status=%s timed_out=%s is_error=%s api_error_status=%s turns=%s cost_usd=%s",
        verdict.end.value, outcome.exit_status, outcome.timed_out, outcome.is_error, outcome.api_error_status,
        outcome.turns, outcome.cost_usd,
    )
    failure = verdict.reason
    report = AgentReport(
        started=outcome.started or terminated is not None, exit_status=outcome.exit_status,
        timed_out=outcome.timed_out, terminated=terminated is not None,
        failure=failure if terminated is None else f"stopped by {terminated}",
        failure_code=int(verdict.exit_code) if failure else 0,
        outcome=verdict.outcome_word,
        turns=outcome.turns, cost_usd=outcome.cost_usd, summary=outcome.summary,
    )
    if not (checkout / ".git").is_dir():
        code = ExitCode.GIT_FAILED if not report.failure else _failure_code(report)
        return _with_error(report, code, "the agent removed the checkout's .git")
    try:
        sha = snapshotter.take()
    except RunnerError as exc:
        return _with_error(report, exc.code, f"the agent's work could not be collected: {exc.message}")
    return AgentReport(**{**report.__dict__, "snapshot": sha})


def _failure_code(report: AgentReport) -> ExitCode:
    return ExitCode.AGENT_TIMEOUT if report.timed_out else ExitCode.AGENT_FAILED


def _with_error(report: AgentReport, code: ExitCode, message: str) -> AgentReport:
    return AgentReport(**{**report.__dict__, "error_code": int(code), "error": message})


def _git_env(base: Mapping[str, str]) -> dict[str, str]:
    """The agent phase's own git: the checkout is the agent's, so no credentials, no prompts."""
    from huskies_agent.runner.credentials import GitAuth

    auth = GitAuth(repo_url="", token="", username="", ssh_key_file="", known_hosts_file="",
                   state_dir=Path(os.devnull))
    return auth.git_env(base)
