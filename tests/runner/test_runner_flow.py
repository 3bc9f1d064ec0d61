"""Story runs against a real git daemon on loopback: fencing by claim epoch, inputs, story lookup.

The agent is the real Claude Code CLI driven by the scripted model server; in the fencing
tests its Bash tool runs tests/runner/compete.sh, so a competing push lands on the branch
while the runner's agent is working, exactly as another claimant's would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from real_cli import Sandbox, run_real
from runner_helpers import STORY_ID, RunnerRun, StoryRepo, clone_branch, git, remote_branches, trailers
from tests.helpers.model_server import ModelServer, Reply, Step, request_text, text, tool_use

BRANCH = f"feature/story-{STORY_ID}"
COMPETE = Path(__file__).resolve().parent / "compete.sh"


def _edit(name: str = "agent_output.txt", content: str = "edited by the agent\n") -> list[Step]:
    return [Reply([tool_use("Write", {"file_path": name, "content": content})]),
            Reply([text("Done.")], expect_tool_result=name)]


def _compete_then_edit(url: str, epoch: str, branch: str = BRANCH) -> list[Step]:
    command = f"sh {COMPETE} {url} {branch} main '{epoch}'"
    return [Reply([tool_use("Bash", {"command": command, "description": "another claimant pushes"})]),
            Reply([tool_use("Write", {"file_path": "agent_output.txt", "content": "ours\n"})],
                  expect_tool_result="pushed a competing commit"),
            Reply([text("Done.")])]


def _run(box: Sandbox, repo: StoryRepo, script: list[Step], **kwargs: Any) -> RunnerRun:
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url, **kwargs)
    assert server.problems == [], server.problems
    return run


@pytest.mark.parametrize("their_epoch", ["9", "5", ""], ids=["higher", "equal", "no-trailer"])
def test_push_is_fenced_when_the_branch_moved_to_a_newer_claim(
    box: Sandbox, repo: StoryRepo, tmp_path: Path, their_epoch: str,
) -> None:
    first = run_real_ok(box, repo, _edit(), epoch=4)
    # While this run's agent works, another claimant pushes to the branch.
    run = _run(box, repo, _compete_then_edit(repo.url, their_epoch), epoch=5)
    assert run.returncode == 14, run.stderr[-3000:]
    result = run.result
    assert result["exit_code"] == 14 and result["pushed"] is False
    assert "fenced" in result["error"]
    assert result["base_commit"] == first["commit"]
    tip = remote_branches(repo.url)[BRANCH]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    # The remote holds the competitor's commit, on top of the first run's, and nothing of ours.
    assert git("rev-parse", "HEAD", cwd=checkout).strip() == tip != result["commit"]
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first["commit"]
    assert (checkout / "competing.txt").exists()
    assert trailers(checkout).get("Huskies-Claim-Epoch", "") == their_epoch


def test_fenced_when_someone_else_creates_the_branch_first(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    run = _run(box, repo, _compete_then_edit(repo.url, "3"), epoch=3)
    assert run.returncode == 14, run.stderr[-3000:]
    assert run.result["base_commit"] == ""
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "competing.txt").exists()
    assert not (checkout / "agent_output.txt").exists()


def test_a_stale_lower_epoch_tip_is_overwritten(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    first = run_real_ok(box, repo, _edit(), epoch=1)
    # A node that lost its claim (epoch 2) pushes late, while the winner (epoch 6) works.
    run = _run(box, repo, _compete_then_edit(repo.url, "2"), epoch=6)
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.result
    assert result["pushed"] is True
    assert "older claim epoch 2" in run.stderr
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert git("rev-parse", "HEAD", cwd=checkout).strip() == result["commit"]
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first["commit"]
    assert not (checkout / "competing.txt").exists()
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "6"


def test_inputs_from_env_and_options_win(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    env = {
        "HUSKIES_STORY_ID": "../../not-this-one",  # the option below wins
        "HUSKIES_STAGE": "2_current",
        "HUSKIES_REPO_URL": repo.url,
        "HUSKIES_BASE_BRANCH": "main",
        "HUSKIES_EPOCH": "3",
        "HUSKIES_NODE_ID": "env-node",
    }
    run = _run(box, repo, _edit(), env=env, options=False)
    assert run.returncode == 0, run.stderr[-3000:]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert trailers(checkout)["Huskies-Node"] == "env-node"
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "3"


def test_story_file_with_slug_suffix_and_restarted_workdir(
    box: Sandbox, make_repo: Callable[..., StoryRepo], tmp_path: Path,
) -> None:
    repo = make_repo(files={
        ".huskies/work/2_current/7_x_the_story.md": "# seven\n",
        ".huskies/work/2_current/70_other.md": "# not this one\n",
    })
    workdir = box.root / "reused"
    (workdir / "repo").mkdir(parents=True)
    (workdir / "repo" / "leftover").write_text("from a previous container\n")
    box.own_tree(workdir)
    with ModelServer(_edit()) as server:
        run = run_real(box, server.url, story_id="7", repo_url=repo.url, workdir=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    prompt = request_text(server.main_requests[0].body)
    assert "# seven" in prompt and "not this one" not in prompt
    assert "Story file: .huskies/work/2_current/7_x_the_story.md" in prompt
    checkout = clone_branch(repo.url, "feature/story-7", tmp_path / "check")
    assert not (checkout / "leftover").exists()


def run_real_ok(box: Sandbox, repo: StoryRepo, script: list[Step], **kwargs: Any) -> dict[str, Any]:
    run = _run(box, repo, script, **kwargs)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.result
