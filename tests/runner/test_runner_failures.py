"""Each way a story run can fail ends with its documented exit code and message.

The agent failures the real CLI shows are in test_real_cli_failures.py; here fake_claude.py
stands in only where no agent runs (bad inputs), or where the real CLI cannot be made to
fail that way on cue (a crash with a chosen status and no result, is_error with exit 0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from real_cli import Sandbox, run_real
from runner_helpers import (
    STORY_ID,
    StoryRepo,
    free_port,
    install_hook,
    remote_branches,
    run_runner,
)
from tests.helpers.model_server import ModelServer, Reply, text, tool_use

BRANCH = f"feature/story-{STORY_ID}"


def _assert_failed(run_result: dict[str, object], code: int, *fragments: str) -> None:
    assert run_result["exit_code"] == code, run_result
    assert run_result["pushed"] is False
    for fragment in fragments:
        assert fragment in str(run_result["error"]), run_result["error"]


@pytest.mark.parametrize(
    "story_id",
    ["../../x", "$(rm -rf /)", "a" * 300, "", "-rf", "x;touch /tmp/pwned", "a b", "42_x.lock", "x\ny"],
    ids=["dotdot", "subshell", "300-chars", "empty", "dash", "semicolon", "space", "lock", "newline"],
)
def test_invalid_story_ids_are_refused_before_anything_runs(
    tmp_path: Path, repo: StoryRepo, story_id: str,
) -> None:
    run = run_runner(tmp_path, story_id=story_id, repo_url=repo.url)
    assert run.returncode == 10, run.stderr
    _assert_failed(run.result, 10, "story id")
    assert run.termination.strip() == run.stdout.strip().splitlines()[-1]
    assert len(run.termination.encode()) < 4096
    assert not (run.workdir / "repo").exists()  # nothing was cloned
    assert list(remote_branches(repo.url)) == ["main"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"stage": "5_done"}, "invalid stage"),
        ({"stage": "1_backlog"}, "invalid stage"),
        ({"stage": None}, "invalid stage"),
        ({"epoch": "abc"}, "epoch must be a whole number"),
        ({"epoch": "-1"}, "epoch must be 0 or more"),
        ({"epoch": None}, "epoch is missing"),
        ({"node": "bad node"}, "invalid node id"),
        ({"node": None}, "invalid node id"),
        ({"repo_url": "--upload-pack=touch /tmp/pwned"}, "repo URL"),
        ({"repo_url": "ext::sh -c touch% /tmp/pwned"}, "repo URL"),
        ({"repo_url": "https://user:hunter2secret@example.invalid/x.git"}, "may not carry a password"),
        ({"repo_url": None}, "repo URL is missing"),
        ({"base_branch": "..bad"}, "base branch"),
        ({"base_branch": "-x"}, "base branch"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v!r}" for k, v in v.items()),
)
def test_invalid_inputs(tmp_path: Path, repo: StoryRepo, overrides: dict[str, str | None], fragment: str) -> None:
    kwargs: dict[str, object] = {"story_id": STORY_ID, "stage": "2_current", "repo_url": repo.url,
                                 "base_branch": "main", "epoch": 1, "node": "node-a"}
    kwargs.update(overrides)
    run = run_runner(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert run.returncode == 10, run.stderr
    _assert_failed(run.result, 10, fragment)
    assert "hunter2secret" not in run.all_output
    assert not Path("/tmp/pwned").exists()


def test_invalid_agent_limits(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, env={"HUSKIES_MAX_TURNS": "many"})
    assert run.returncode == 10
    _assert_failed(run.result, 10, "HUSKIES_MAX_TURNS")


def test_missing_story_file(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id="99_not_there", repo_url=repo.url)
    assert run.returncode == 11, run.stderr
    _assert_failed(run.result, 11, "no story file 99_not_there.md", ".huskies/work/2_current")
    assert list(remote_branches(repo.url)) == ["main"]


def test_story_name_prefix_does_not_match_a_longer_id(
    tmp_path: Path, make_repo: Callable[..., StoryRepo],
) -> None:
    repo = make_repo(files={".huskies/work/2_current/420_other.md": "# other\n"})
    run = run_runner(tmp_path, story_id="42", repo_url=repo.url)
    assert run.returncode == 11


def test_unreachable_remote(tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/nothing.git"
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=url)
    assert run.returncode == 12, run.stderr
    _assert_failed(run.result, 12, "reaching the remote")


def test_missing_base_branch(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, base_branch="develop")
    assert run.returncode == 12
    _assert_failed(run.result, 12, "base branch develop")


def test_agent_crash(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, env={"FAKE_CLAUDE_MODE": "crash"})
    assert run.returncode == 16, run.stderr
    _assert_failed(run.result, 16, "exited with status 3")
    assert run.result["agent_exit_status"] == 3
    assert "simulated crash" in run.stdout  # the agent's stderr is in the pod log too
    assert BRANCH not in remote_branches(repo.url)


def test_agent_reporting_is_error(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url,
                     env={"FAKE_CLAUDE_MODE": "error", "FAKE_CLAUDE_EXIT": "0"})
    assert run.returncode == 16
    _assert_failed(run.result, 16, "reported an error", "error_during_execution")
    assert run.result["agent_exit_status"] == 0 and run.result["turns"] == 3


def test_agent_binary_missing(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url,
                     env={"HUSKIES_CLAUDE_BIN": str(tmp_path / "no-such-claude")})
    assert run.returncode == 16
    _assert_failed(run.result, 16, "could not be started")
    assert run.result["agent_exit_status"] is None


def test_push_rejected_by_a_hook(box: Sandbox, repo: StoryRepo) -> None:
    install_hook(repo.bare, "pre-receive", 'print("branch protected by policy", file=sys.stderr)\nsys.exit(1)')
    script = [Reply([tool_use("Write", {"file_path": "widget.txt", "content": "w\n"})]), Reply([text("Done.")])]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert run.returncode == 13, run.stderr[-3000:]
    _assert_failed(run.result, 13, "rejected", "pre-receive hook declined")
    assert BRANCH not in remote_branches(repo.url)

