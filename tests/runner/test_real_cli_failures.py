"""The real Claude Code CLI when the model API fails, limits are reached, or the run is stopped.

Each case checks the runner's exit code, the reason in the result (what the StoryJob
shows) and what was pushed; the mapping is the "Agent outcomes" table in docs/runner.md.
The CLI retries failed API calls itself; the tests set ``CLAUDE_CODE_MAX_RETRIES=1`` so
a persistent failure gives up after one retry instead of ten over minutes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from real_cli import Sandbox, cli_env, finish, real_command, run_real
from runner_helpers import STORY_ID, StoryRepo, clone_branch, process_gone, remote_branches, trailers
from tests.helpers.model_server import Fail, ModelServer, Reply, Step, text, tool_use

BRANCH = f"feature/story-{STORY_ID}"


@pytest.mark.parametrize(
    ("failure", "code", "fragment"),
    [
        (Fail(status=401, times=2), 20, "refused the credentials (HTTP 401)"),
        (Fail(status=403), 20, "refused the credentials (HTTP 403)"),
        (Fail(status=429, retry_after="1", times=2), 21, "unavailable (HTTP 429)"),
        (Fail(status=529, times=2), 21, "unavailable (HTTP 529)"),
        (Fail(status=500, times=2), 21, "unavailable (HTTP 500)"),
        (Fail(cut_after=3, times=3), 21, "unavailable (no HTTP status)"),
    ],
    ids=["401-bad-key", "403", "429-retry-after", "529-overloaded", "500", "stream-cut"],
)
def test_api_failure_on_the_first_call(
    box: Sandbox, repo: StoryRepo, failure: Fail, code: int, fragment: str,
) -> None:
    with ModelServer([failure]) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert run.returncode == code, run.stderr[-3000:]
    assert run.result["exit_code"] == code and run.result["pushed"] is False
    assert fragment in str(run.result["error"]), run.result["error"]
    assert run.result["agent_exit_status"] == 1
    # The CLI retried once (CLAUDE_CODE_MAX_RETRIES=1); a cut stream is retried without streaming too.
    assert server.unused_steps == 0 and server.problems == []
    if failure.cut_after >= 0:
        assert [r.body.get("stream") for r in server.main_requests] == [True, True, False]
    assert list(remote_branches(repo.url)) == ["main"]


def test_api_recovers_after_transient_failures(box: Sandbox, repo: StoryRepo) -> None:
    """One 529 and a stream cut mid-event are retried by the CLI and the run succeeds."""
    script: list[Step] = [
        Fail(status=529),
        Reply([tool_use("Write", {"file_path": "widget.txt", "content": "w\n"})]),
        Fail(cut_after=2),
        Reply([text("Done.")], expect_tool_result="widget.txt"),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert server.problems == [] and server.unused_steps == 0
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["pushed"] is True


def test_cut_streams_fall_back_to_a_non_streaming_request(box: Sandbox, repo: StoryRepo) -> None:
    """After its retries of a cut stream the CLI asks once without streaming; a JSON answer saves the run."""
    script: list[Step] = [
        Fail(cut_after=3, times=2),
        Reply([tool_use("Write", {"file_path": "fallback.txt", "content": "via json\n"})]),
        Reply([text("Done.")], expect_tool_result="fallback.txt"),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert server.problems == [] and server.unused_steps == 0
    assert [r.body.get("stream") for r in server.main_requests][:3] == [True, True, False]
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["pushed"] is True


def test_overload_after_an_edit_pushes_the_partial_work(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    script: list[Step] = [
        Reply([tool_use("Write", {"file_path": "half.txt", "content": "half done\n"})]),
        Fail(status=529, times=2),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert run.returncode == 21, run.stderr[-3000:]
    assert run.result["pushed"] is True
    assert "partial work was pushed" in str(run.result["error"])
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "half.txt").read_text() == "half done\n"
    assert trailers(checkout)["Huskies-Outcome"] == "agent-api-unavailable"


def test_slow_first_token_is_waited_for(box: Sandbox, repo: StoryRepo) -> None:
    script = [
        Reply([tool_use("Write", {"file_path": "slow.txt", "content": "eventually\n"})], delay=3),
        Reply([text("Done.")], expect_tool_result="slow.txt"),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert server.problems == []
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(server.main_requests) == 2  # no retry: the slow answer was not given up on


def test_max_turns_reached(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    script = [
        Reply([tool_use("Write", {"file_path": "step1.txt", "content": "1\n"})]),
        Reply([tool_use("Write", {"file_path": "step2.txt", "content": "2\n"})]),
        Reply([tool_use("Write", {"file_path": "step3.txt", "content": "3\n"})]),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url, env={"HUSKIES_MAX_TURNS": "2"})
    assert run.returncode == 16, run.stderr[-3000:]
    assert "turn limit (2)" in str(run.result["error"])
    assert len(server.main_requests) == 2
    assert run.result["pushed"] is True  # what it did so far is kept for the retry
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "step2.txt").exists() and not (checkout / "step3.txt").exists()
    assert trailers(checkout)["Huskies-Outcome"] == "agent-max-turns"


def test_budget_reached(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    # The second reply reports a million input tokens, more than the $0.50 budget: the CLI asks the
    # model nothing more. (Whether it still runs that turn's tool races with its budget check, so
    # that tool is harmless; the first turn's file is the partial work.)
    script = [
        Reply([tool_use("Write", {"file_path": "cheap.txt", "content": "x\n"})]),
        Reply([tool_use("Bash", {"command": "true", "description": "nothing"})], input_tokens=1_000_000),
        Reply([text("never reached")]),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url,
                       env={"HUSKIES_MAX_BUDGET_USD": "0.5"})
    assert run.returncode == 22, run.stderr[-3000:]
    result = run.result
    assert result["exit_code"] == 22
    assert "reached its budget" in str(result["error"]) and "of $0.5" in str(result["error"])
    assert isinstance(result["cost_usd"], float) and result["cost_usd"] > 0.5
    assert len(server.main_requests) == 2 and server.unused_steps == 1
    assert result["pushed"] is True
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "cheap.txt").read_text() == "x\n"
    assert trailers(checkout)["Huskies-Outcome"] == "agent-budget-reached"


def _blocking_tool(box: Sandbox, name: str) -> tuple[Reply, Path, Path]:
    """A Bash call that detaches (double fork + setsid) one process and blocks in another."""
    pids = box.new_dir(name)
    detached, blocking = pids / "detached.pid", pids / "blocking.pid"
    # The subshell exits at once: the detached sleep is orphaned, out of the CLI's process tree.
    command = (f"(setsid sh -c 'echo $$ > {detached}; exec sleep 600' >/dev/null 2>&1 < /dev/null &); "
               f"sh -c 'echo $$ > {blocking}; exec sleep 601'")
    return (Reply([tool_use("Bash", {"command": command, "description": "work for a long time",
                                     "timeout": 600000})]), detached, blocking)


def _wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        assert proc is None or proc.poll() is None, "the runner ended before the agent's tool started"
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_timeout_kills_the_agent_and_everything_it_started(
    box: Sandbox, repo: StoryRepo, tmp_path: Path,
) -> None:
    tool, detached, blocking = _blocking_tool(box, "pids")
    script = [Reply([tool_use("Write", {"file_path": "partial.txt", "content": "started\n"})]), tool,
              Reply([text("never reached")])]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url, epoch=3,
                       env={"HUSKIES_AGENT_TIMEOUT_SECONDS": "15"})
    assert run.returncode == 15, run.stderr[-3000:]
    assert "timeout" in str(run.result["error"])
    assert run.result["agent_exit_status"] is not None and run.result["agent_exit_status"] != 0
    # The CLI ran the tool (both pids were written) and nothing it started survives the run.
    assert process_gone(int(detached.read_text())) and process_gone(int(blocking.read_text()))
    # What the agent had written was pushed, marked as a timeout, so a retry continues from it.
    assert run.result["pushed"] is True
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "partial.txt").read_text() == "started\n"
    assert trailers(checkout)["Huskies-Outcome"] == "agent-timeout"


def test_sigterm_stops_the_agent_and_everything_it_started(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    """SIGTERM (the pod deleted): every process the agent started ends, and its work in progress is pushed
    as a fenced checkpoint the next claim resumes from (claims protocol, I6)."""
    tool, detached, blocking = _blocking_tool(box, "pids")
    script = [Reply([tool_use("Write", {"file_path": "partial.txt", "content": "started\n"})]), tool,
              Reply([text("never reached")])]
    with ModelServer(script) as server:
        env, workdir = cli_env(box, server.url)
        proc = subprocess.Popen(real_command(story_id=STORY_ID, stage="2_current", repo_url=repo.url),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            _wait_for(blocking, proc)
            _wait_for(detached, proc)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    run = finish(out, err, proc.returncode, env, workdir)
    assert run.returncode == 19, err[-3000:]
    assert run.result["exit_code"] == 19 and run.result["pushed"] is True
    assert "SIGTERM" in str(run.result["error"])
    assert process_gone(int(detached.read_text())) and process_gone(int(blocking.read_text()))
    assert remote_branches(repo.url)[BRANCH] == run.result["commit"]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "partial.txt").read_text() == "started\n"
    assert trailers(checkout)["Huskies-Outcome"] == "checkpoint"
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "1"
