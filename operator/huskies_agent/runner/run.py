"""One story run: validate, then the phases ``clone``, ``agent`` and ``publish``.

In the build pod each phase is its own container (see :mod:`huskies_agent.contract`):
``clone`` and ``publish`` run as the git uid with the git Secret, ``agent`` as the agent
uid without it. ``run-story`` without a phase runs all three in one process (local use
and tests; no isolation): clone, then the publisher in a thread while the agent runs.

:func:`run_story` never raises: every outcome ends as a :class:`RunResult` written to
the termination log and printed as the last line of stdout, and its ``exit_code`` is
the process exit status. The run's result is the publish phase's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TextIO
from urllib.parse import urlsplit

from huskies_agent.contract import ENV_WORKDIR, Phase
from huskies_agent.runner.agent_phase import prepare_out, run_agent_phase
from huskies_agent.runner.clone_phase import clone
from huskies_agent.runner.config import (
    DEFAULT_TERMINATION_LOG,
    DEFAULT_WORKDIR,
    RunnerConfig,
    load_config,
    raw_inputs,
)
from huskies_agent.runner.credentials import GitAuth
from huskies_agent.runner.git import Git
from huskies_agent.runner.handoff import AgentReport, State, Workspace, empty_dir, write_record
from huskies_agent.runner.publish import Publisher
from huskies_agent.runner.redact import Redactor, install_log_redaction, secret_env_values
from huskies_agent.runner.result import ExitCode, RunnerError, RunResult, Terminated, write_termination_log

log = logging.getLogger("huskies_agent.runner")

__all__ = ["Terminated", "run_story"]


@contextlib.contextmanager
def _on_signals(stop: threading.Event, *, raise_once: bool) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; with ``raise_once`` the first one also raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        first = not stop.is_set()
        stop.set()
        if raise_once and first:
            raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _git_for(cfg: RunnerConfig, st: State, environ: Mapping[str, str], redactor: Redactor) -> Git:
    """A git with the run's credentials, HOME in the private state dir."""
    auth = GitAuth(
        repo_url=cfg.repo_url, token=cfg.git_token, token_file=cfg.git_token_file, username=cfg.git_username,
        ssh_key_file=cfg.ssh_key_file, known_hosts_file=cfg.known_hosts_file, state_dir=st.cred,
    )
    try:
        st.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        auth.prepare()
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"git credentials could not be prepared: {exc}") from exc
    redactor.add(*auth.secret_values())
    env = auth.git_env({**environ, "HOME": str(st.home)})
    return Git(url=cfg.repo_url, env=env, redactor=redactor, timeout=cfg.git_timeout_seconds)


def _clone_phase(cfg: RunnerConfig, ws: Workspace, st: State, environ: Mapping[str, str],
                 redactor: Redactor) -> Git:
    try:
        ws.root.mkdir(parents=True, exist_ok=True)
        empty_dir(st.root, 0o700)
    except OSError as exc:
        raise RunnerError(ExitCode.INVALID_INPUT, f"workdir {ws.root} is not usable: {exc}") from exc
    git = _git_for(cfg, st, environ, redactor)
    clone(cfg, git, ws, st)
    return git


def _agent_phase(cfg: RunnerConfig, ws: Workspace, environ: Mapping[str, str], redactor: Redactor,
                 sink: TextIO) -> AgentReport:
    """Run the agent phase and always leave a report for the publisher (unless the disk fails)."""
    report = AgentReport(error_code=int(ExitCode.INTERNAL), error="the agent phase stopped unexpectedly")
    try:
        prepare_out(ws)
        report = run_agent_phase(cfg, ws, environ, redactor, sink)
    except RunnerError as exc:
        report = AgentReport(error_code=int(exc.code), error=exc.message)
    except Terminated as exc:
        report = AgentReport(error_code=int(ExitCode.TERMINATED), error=f"stopped by {exc}", terminated=True)
    finally:
        with contextlib.suppress(OSError):
            write_record(ws.agent_report, report)
    return report


def _execute(phase: Phase, cfg: RunnerConfig, result: RunResult, environ: Mapping[str, str],
             redactor: Redactor, sink: TextIO, stop: threading.Event) -> None:
    result.branch = cfg.branch
    ws, st = Workspace(cfg.workdir), State(cfg.state_dir)
    if phase is Phase.CLONE:
        _clone_phase(cfg, ws, st, environ, redactor)
        result.exit_code = int(ExitCode.OK)
    elif phase is Phase.AGENT:
        report = _agent_phase(cfg, ws, environ, redactor, sink)
        if report.error_code and not report.snapshot:
            result.fail(ExitCode(report.error_code), report.error)
        else:
            result.exit_code = int(ExitCode.OK)  # handed over; the publisher's result is the run's
    elif phase is Phase.PUBLISH:
        Publisher(cfg, _git_for(cfg, st, environ, redactor), ws, st, result, stop).run()
    else:
        git = _clone_phase(cfg, ws, st, environ, redactor)
        wake = threading.Event()
        publisher = Publisher(cfg, git, ws, st, result, stop, wake)
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                publisher.run()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=publish, name="publisher", daemon=True)
        thread.start()
        try:
            _agent_phase(cfg, ws, environ, redactor, sink)
        finally:
            wake.set()
            while thread.is_alive():  # a stop signal now must not abandon a push under way
                with contextlib.suppress(Terminated):
                    thread.join()
        if errors:
            raise errors[0]


def _leave_report(environ: Mapping[str, str], result: RunResult) -> None:
    """The agent phase failed before it could report (e.g. a bad limit): tell the publisher why."""
    ws = Workspace(Path(environ.get(ENV_WORKDIR) or DEFAULT_WORKDIR))
    if ws.agent_report.exists() or ws.agent_report.is_symlink():
        return
    try:
        ws.out.mkdir(parents=True, exist_ok=True)
        write_record(ws.agent_report, AgentReport(error_code=result.exit_code, error=result.error))
    except OSError as exc:
        log.warning("could not leave the agent phase's report: %s", exc)


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
    phase: Phase = Phase.ALL,
) -> int:
    """Run one story (or one phase of it); returns the exit code (see :mod:`huskies_agent.contract`)."""
    environ = dict(os.environ if environ is None else environ)
    sink = sink if sink is not None else sys.stdout
    redactor = _redactor_for(options, environ)
    log_filter = install_log_redaction(redactor)
    result = _initial_result(options, environ, redactor)
    termination_log = environ.get("HUSKIES_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    stop = threading.Event()
    try:
        with _on_signals(stop, raise_once=phase is not Phase.PUBLISH):
            try:
                cfg = load_config(options, environ)
                result.story_id, result.stage, result.epoch = cfg.story_id, cfg.stage, cfg.epoch
                _execute(phase, cfg, result, environ, redactor, sink, stop)
            except RunnerError as exc:
                result.fail(exc.code, exc.message)
            except Terminated as exc:
                result.fail(ExitCode.TERMINATED, f"stopped by {exc}")
            except Exception as exc:  # a bug: report it rather than die without a result
                log.exception("internal error")
                result.fail(ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    except Terminated as exc:  # a signal between the inner handlers and leaving the block
        result.fail(ExitCode.TERMINATED, f"stopped by {exc}")
    for key in ("story_id", "stage", "branch", "commit", "base_commit", "error"):
        setattr(result, key, redactor.redact(getattr(result, key)))
    if phase is Phase.AGENT and result.exit_code:
        _leave_report(environ, result)
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
