"""Story runs against a real git daemon on loopback: fencing by claim epoch, inputs, story lookup.

These exercise the git side of the runner; the agent is tests/runner/fake_claude.py because
fencing needs a competing push at a chosen moment of the run, and the real CLI's part
(tests/runner/test_real_cli_*.py) adds nothing here but seconds per run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from runner_helpers import STORY_ID, StoryRepo, clone_branch, git, remote_branches, run_runner, trailers

BRANCH = f"feature/story-{STORY_ID}"


@pytest.mark.parametrize("their_epoch", ["9", "5", ""], ids=["higher", "equal", "no-trailer"])
def test_push_is_fenced_when_the_branch_moved_to_a_newer_claim(
    tmp_path: Path, repo: StoryRepo, their_epoch: str,
) -> None:
    first = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=4)
    assert first.returncode == 0, first.stderr
    # While this run's agent works, another claimant pushes to the branch.
    run = run_runner(
        tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=5,
        env={"FAKE_CLAUDE_COMPETE_URL": repo.url, "FAKE_CLAUDE_COMPETE_BRANCH": BRANCH,
             "FAKE_CLAUDE_COMPETE_EPOCH": their_epoch},
    )
    assert run.returncode == 14, run.stderr
    assert run.result["exit_code"] == 14
    assert run.result["pushed"] is False
    assert "fenced" in run.result["error"]
    assert run.result["base_commit"] == first.result["commit"]
    tip = remote_branches(repo.url)[BRANCH]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    # The remote holds the competitor's commit, on top of the first run's, and nothing of ours.
    assert git("rev-parse", "HEAD", cwd=checkout).strip() == tip != run.result["commit"]
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first.result["commit"]
    assert (checkout / "competing.txt").exists()
    assert trailers(checkout).get("Huskies-Claim-Epoch", "") == their_epoch


def test_fenced_when_someone_else_creates_the_branch_first(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(
        tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=3,
        env={"FAKE_CLAUDE_COMPETE_URL": repo.url, "FAKE_CLAUDE_COMPETE_BRANCH": BRANCH,
             "FAKE_CLAUDE_COMPETE_EPOCH": "3"},
    )
    assert run.returncode == 14, run.stderr
    assert run.result["base_commit"] == ""
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "competing.txt").exists()
    assert not (checkout / "fake_claude_output.txt").exists()


def test_a_stale_lower_epoch_tip_is_overwritten(tmp_path: Path, repo: StoryRepo) -> None:
    first = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=1)
    assert first.returncode == 0
    # A node that lost its claim (epoch 2) pushes late, while the winner (epoch 6) works.
    run = run_runner(
        tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=6,
        env={"FAKE_CLAUDE_COMPETE_URL": repo.url, "FAKE_CLAUDE_COMPETE_BRANCH": BRANCH,
             "FAKE_CLAUDE_COMPETE_EPOCH": "2"},
    )
    assert run.returncode == 0, run.stderr
    assert run.result["pushed"] is True
    assert "older claim epoch 2" in run.stderr
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert git("rev-parse", "HEAD", cwd=checkout).strip() == run.result["commit"]
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first.result["commit"]
    assert not (checkout / "competing.txt").exists()
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "6"


def test_inputs_from_env_and_options_win(tmp_path: Path, repo: StoryRepo) -> None:
    env = {
        "HUSKIES_STORY_ID": "../../not-this-one",  # the option below wins
        "HUSKIES_STAGE": "2_current",
        "HUSKIES_REPO_URL": repo.url,
        "HUSKIES_BASE_BRANCH": "main",
        "HUSKIES_EPOCH": "3",
        "HUSKIES_NODE_ID": "env-node",
    }
    run = run_runner(tmp_path, story_id=STORY_ID, stage=None, repo_url=None, base_branch=None,
                     epoch=None, node=None, env=env)
    assert run.returncode == 0, run.stderr
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert trailers(checkout)["Huskies-Node"] == "env-node"
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "3"


def test_story_file_with_slug_suffix_and_restarted_workdir(
    tmp_path: Path, make_repo: Callable[..., StoryRepo],
) -> None:
    repo = make_repo(files={
        ".huskies/work/2_current/7_x_the_story.md": "# seven\n",
        ".huskies/work/2_current/70_other.md": "# not this one\n",
    })
    workdir = tmp_path / "reused"
    (workdir / "repo").mkdir(parents=True)
    (workdir / "repo" / "leftover").write_text("from a previous container\n")
    args_dump = tmp_path / "args.json"
    run = run_runner(tmp_path, story_id="7", repo_url=repo.url, workdir=workdir,
                     env={"FAKE_CLAUDE_ARGS_DUMP": str(args_dump)})
    assert run.returncode == 0, run.stderr
    prompt = json.loads(args_dump.read_text())["prompt"]
    assert "# seven" in prompt and "not this one" not in prompt
    checkout = clone_branch(repo.url, "feature/story-7", tmp_path / "check")
    assert not (checkout / "leftover").exists()
