"""One story run, start to finish: validate, clone, prompt, agent, commit, fenced push, report.

:func:`run_story` never raises: every outcome ends as a :class:`RunResult` written to
the termination log and printed as the last line of stdout, and its ``exit_code`` is
the process exit status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO
from urllib.parse import urlsplit

from huskies_agent.pipeline import stages
from huskies_agent.runner.agent import AgentOutcome, claude_command, run_agent
from huskies_agent.runner.config import DEFAULT_TERMINATION_LOG, RunnerConfig, load_config, raw_inputs
from huskies_agent.runner.credentials import GitAuth, agent_env
from huskies_agent.runner.git import EPOCH_TRAILER, INSPECT_REF, Git, PushStatus
from huskies_agent.runner.prompt import PromptInputs, build_prompt
from huskies_agent.runner.redact import Redactor, install_log_redaction, secret_env_values
from huskies_agent.runner.result import ExitCode, RunnerError, RunResult, write_termination_log
from huskies_agent.runner.story import find_story
from huskies_agent.runner.verdict import verdict_of

log = logging.getLogger("huskies_agent.runner")

CHECKOUT_DIR = "repo"
STATE_DIR = ".runner"
#: How often a push is retried after overwriting a stale (lower-epoch) tip moved again.
MAX_PUSH_ATTEMPTS = 3
_SUMMARY_CHARS = 1500


class Terminated(Exception):
    """The runner was asked to stop (SIGTERM/SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------- fenced push

@dataclass(frozen=True)
class PushReport:
    status: str  # "pushed", "fenced", "rejected", "failed"
    message: str
    #: The stale tip that was overwritten ("" when none).
    overwrote: str = ""


def fenced_push(git: Git, repo: Path, branch: str, expected: str, epoch: int) -> PushReport:
    """Push HEAD to ``branch`` only over ``expected`` or over a tip of a lower claim epoch."""
    overwrote = ""
    for _attempt in range(MAX_PUSH_ATTEMPTS):
        outcome = git.push_with_lease(repo, branch, expected)
        if outcome.status is PushStatus.OK:
            return PushReport("pushed", "", overwrote)
        if outcome.status is PushStatus.FAILED:
            return PushReport("failed", f"push to the remote failed: {outcome.reason}")
        try:
            tip = git.remote_tip(branch)
        except RunnerError as exc:
            return PushReport("failed", f"push rejected ({outcome.reason}), then {exc.message}")
        if tip == expected:
            return PushReport("rejected", f"the remote rejected the push of {branch}: {outcome.reason}")
        if not tip:
            return PushReport(
                "fenced", f"{branch} was deleted on the remote while this run worked; not recreating it"
            )
        try:
            tip = git.fetch_branch(repo, branch, INSPECT_REF, depth=1)
        except RunnerError as exc:
            return PushReport("failed", f"the branch moved and its new tip could not be fetched: {exc.message}")
        theirs = git.claim_epoch_of(repo, tip)
        if theirs is not None and theirs < epoch:
            log.warning(
                "%s moved to %s, pushed under the older claim epoch %d (ours %d); overwriting it",
                branch, tip[:12], theirs, epoch,
            )
            expected = overwrote = tip
            continue
        shown = "no " + EPOCH_TRAILER + " trailer" if theirs is None else f"claim epoch {theirs}"
        return PushReport(
            "fenced",
            f"fenced: {branch} moved on the remote to {tip[:12]} ({shown}; this run has epoch {epoch}); "
            "the remote was left untouched",
        )
    return PushReport("fenced", f"fenced: {branch} kept moving on the remote; the remote was left untouched")


# ---------------------------------------------------------------------- the run

def _commit_message(cfg: RunnerConfig, outcome: AgentOutcome, result_word: str) -> str:
    role = stages.ROLE_FOR_STAGE[cfg.stage]
    lines = [f"huskies: {role} work on story {cfg.story_id}", ""]
    if result_word == "completed":
        lines.append(f"The {role} agent finished (stage {cfg.stage}).")
    else:
        lines.append(f"The {role} agent did not finish ({outcome.failure()}); this commit keeps its partial work.")
    summary = outcome.summary.strip()
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
        f"Huskies-Outcome: {result_word}",
    ]
    return "\n".join(lines) + "\n"


def _fresh_dir(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)


def _home_dir(environ: Mapping[str, str], workdir: Path) -> Path:
    home = environ.get("HOME", "")
    for candidate in ([Path(home)] if home else []) + [workdir / "home"]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise RunnerError(ExitCode.INVALID_INPUT, f"no writable home directory (HOME={home!r}, workdir={workdir})")


def _execute(cfg: RunnerConfig, result: RunResult, environ: Mapping[str, str], redactor: Redactor,
             sink: TextIO) -> None:
    result.branch = cfg.branch
    role = stages.ROLE_FOR_STAGE[cfg.stage]
    try:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        checkout = cfg.workdir / CHECKOUT_DIR
        state = cfg.workdir / STATE_DIR
        _fresh_dir(state)
        if checkout.is_symlink() or checkout.is_file():
            checkout.unlink()
        elif checkout.exists():  # a restarted container finds its previous checkout
            shutil.rmtree(checkout)
        home = _home_dir(environ, cfg.workdir)
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"workdir {cfg.workdir} is not usable: {exc}") from exc

    auth = GitAuth(
        repo_url=cfg.repo_url, token=cfg.git_token, username=cfg.git_username,
        ssh_key_file=cfg.ssh_key_file, known_hosts_file=cfg.known_hosts_file, state_dir=state,
    )
    try:
        auth.prepare()
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"git credentials could not be prepared: {exc}") from exc
    base_env = {**environ, "HOME": str(home)}
    git = Git(url=cfg.repo_url, env=auth.git_env(base_env), redactor=redactor, timeout=cfg.git_timeout_seconds)

    # 1. Where does the branch stand on the remote?
    remote = git.ls_remote([cfg.branch, cfg.base_branch])
    depth = cfg.clone_depth if role == "coder" else 0  # QA and merge need history to diff and merge
    resumed = cfg.branch in remote
    if resumed:
        log.info("branch %s exists on the remote at %s; continuing from it", cfg.branch, remote[cfg.branch][:12])
        git.clone(checkout, branch=cfg.branch, depth=depth)
        start_sha = git.rev_parse(checkout, "HEAD")
    else:
        if cfg.base_branch not in remote:
            raise RunnerError(
                ExitCode.REMOTE_FAILED,
                f"neither {cfg.branch} nor the base branch {cfg.base_branch} exists on the remote",
            )
        log.info("branch %s does not exist yet; starting it from %s", cfg.branch, cfg.base_branch)
        git.clone(checkout, branch=cfg.base_branch, depth=depth)
        git.local(checkout, ["checkout", "-q", "-b", cfg.branch], f"creating branch {cfg.branch}")
        start_sha = ""
    result.base_commit = start_sha
    local_start = git.rev_parse(checkout, "HEAD")
    result.commit = start_sha

    if role != "coder" and cfg.base_branch != cfg.branch:
        if cfg.base_branch in remote:
            git.fetch_branch(checkout, cfg.base_branch, f"refs/remotes/origin/{cfg.base_branch}", depth=0)
        else:
            log.warning("base branch %s does not exist on the remote; %s works without it", cfg.base_branch, role)
    git.local(checkout, ["config", "user.name", cfg.author_name], "setting the commit author")
    git.local(checkout, ["config", "user.email", cfg.author_email], "setting the commit author")

    # 2. The story and the prompt.
    story = find_story(checkout, cfg.story_id, cfg.stage)
    note = story.fallback_note(cfg.stage)
    if note:
        log.warning("%s", note)
    log.info("story file %s (%d characters)", story.relative, len(story.text))
    prompt = build_prompt(PromptInputs(
        story_id=cfg.story_id, stage=cfg.stage, branch=cfg.branch, base_branch=cfg.base_branch,
        epoch=cfg.epoch, story_path=story.relative, story_text=story.text,
        story_truncated=story.truncated, fallback_note=note, resumed=resumed,
    ))

    # 3. The agent.
    command = claude_command(
        cfg.claude_bin, model=cfg.model, max_turns=cfg.max_turns, max_budget_usd=cfg.max_budget_usd,
    )
    log.info("starting the %s agent: %s", role, " ".join(command))
    outcome = run_agent(
        command, prompt=prompt, cwd=checkout, env=agent_env(base_env, home=home),
        timeout=cfg.agent_timeout_seconds, redactor=redactor, sink=sink,
    )
    result.agent_exit_status = outcome.exit_status
    result.turns = outcome.turns
    result.cost_usd = outcome.cost_usd
    verdict = verdict_of(outcome, cfg.max_budget_usd, cfg.max_turns)
    failure, failure_code = verdict.reason, verdict.exit_code
    log.info(
        "agent finished: %s status=%s timed_out=%s is_error=%s api_error_status=%s turns=%s cost_usd=%s",
        verdict.end.value, outcome.exit_status, outcome.timed_out, outcome.is_error, outcome.api_error_status,
        outcome.turns, outcome.cost_usd,
    )
    if outcome.started and not outcome.result_seen and not outcome.timed_out:
        log.warning("the agent printed no result event")

    # 4. Anything to commit?
    if not (checkout / ".git").is_dir():
        raise RunnerError(failure_code if failure else ExitCode.GIT_FAILED, "the agent removed the checkout's .git")
    dirty = git.worktree_dirty(checkout)
    moved = git.rev_parse(checkout, "HEAD") != local_start
    if not dirty and not moved:
        if failure:
            result.fail(failure_code, failure)
        elif role == "coder":
            result.fail(ExitCode.NO_CHANGES, f"the coder agent finished without changing anything on {cfg.branch}")
        else:
            log.info("the %s agent changed nothing; nothing to push", role)
            result.exit_code = int(ExitCode.OK)
        return

    word = verdict.outcome_word
    identity = {
        "GIT_AUTHOR_NAME": cfg.author_name, "GIT_AUTHOR_EMAIL": cfg.author_email,
        "GIT_COMMITTER_NAME": cfg.author_name, "GIT_COMMITTER_EMAIL": cfg.author_email,
    }
    result.commit = git.commit_all(checkout, _commit_message(cfg, outcome, word), identity)
    log.info("committed %s on %s", result.commit[:12], cfg.branch)

    # 5. The fenced push.
    report = fenced_push(git, checkout, cfg.branch, start_sha, cfg.epoch)
    if report.status == "pushed":
        result.pushed = True
        extra = f" (overwrote the stale tip {report.overwrote[:12]})" if report.overwrote else ""
        log.info("pushed %s to %s%s", result.commit[:12], cfg.branch, extra)
        if failure:
            result.fail(failure_code, f"{failure}; its partial work was pushed as {result.commit[:12]}")
        else:
            result.exit_code = int(ExitCode.OK)
        return
    log.error("%s", report.message)
    if report.status == "fenced":
        result.fail(ExitCode.FENCED, report.message + (f" (and {failure})" if failure else ""))
    elif failure:
        result.fail(failure_code, f"{failure}; saving its partial work failed too: {report.message}")
    elif report.status == "rejected":
        result.fail(ExitCode.PUSH_REJECTED, report.message)
    else:
        result.fail(ExitCode.REMOTE_FAILED, report.message)


def _initial_result(options: Mapping[str, object], environ: Mapping[str, str], redactor: Redactor) -> RunResult:
    raw = raw_inputs(options, environ)
    result = RunResult(story_id=redactor.redact(raw["story_id"]), stage=redactor.redact(raw["stage"]))
    with contextlib.suppress(ValueError):
        result.epoch = int(raw["epoch"])
    return result


def _redactor_for(options: Mapping[str, object], environ: Mapping[str, str]) -> Redactor:
    redactor = Redactor(secret_env_values(environ))
    url = raw_inputs(options, environ)["repo_url"]
    if "://" in url:
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
            if password:
                redactor.add(password)
    return redactor


def run_story(
    options: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    sink: TextIO | None = None,
) -> int:
    """Run one story; returns the exit code (see :mod:`huskies_agent.runner.result`)."""
    environ = dict(os.environ if environ is None else environ)
    sink = sink if sink is not None else sys.stdout
    redactor = _redactor_for(options, environ)
    log_filter = install_log_redaction(redactor)
    result = _initial_result(options, environ, redactor)
    termination_log = environ.get("HUSKIES_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    try:
        with _stop_on_signals():
            try:
                cfg = load_config(options, environ)
                result.story_id, result.stage, result.epoch = cfg.story_id, cfg.stage, cfg.epoch
                _execute(cfg, result, environ, redactor, sink)
            except RunnerError as exc:
                result.fail(exc.code, exc.message)
            except Terminated as exc:
                result.fail(ExitCode.TERMINATED, f"stopped by {exc}; nothing was pushed")
            except Exception as exc:  # a bug: report it rather than die without a result
                log.exception("internal error")
                result.fail(ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    except Terminated as exc:  # a signal between the inner handlers and leaving the block
        result.fail(ExitCode.TERMINATED, f"stopped by {exc}")
    for key in ("story_id", "stage", "branch", "commit", "base_commit", "error"):
        setattr(result, key, redactor.redact(getattr(result, key)))
    line = result.to_json()
    if result.exit_code:
        log.error("story run failed (exit %d): %s", result.exit_code, result.error)
    else:
        log.info("story run succeeded: %s %s", result.branch, "pushed" if result.pushed else "unchanged")
    write_termination_log(termination_log, line)
    sink.write(line + "\n")
    sink.flush()
    for handler in logging.getLogger().handlers:
        handler.removeFilter(log_filter)
    return result.exit_code
