"""Story runs against a real git daemon on loopback: push, resume, fencing by claim epoch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from runner_helpers import STORY_ID, STORY_TEXT, StoryRepo, clone_branch, git, remote_branches, run_runner, trailers

BRANCH = f"feature/story-{STORY_ID}"
RESULT_KEYS = {
    "story_id", "stage", "branch", "commit", "base_commit", "pushed", "exit_code", "error",
    "agent_exit_status", "turns", "cost_usd", "epoch",
}


def test_first_run_pushes_the_story_branch(tmp_path: Path, repo: StoryRepo) -> None:
    args_dump = tmp_path / "args.json"
    run = run_runner(
        tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=7, node="node-a",
        env={"FAKE_CLAUDE_CONTENT": "the widget", "FAKE_CLAUDE_ARGS_DUMP": str(args_dump),
             "HUSKIES_MODEL": "claude-test-model", "HUSKIES_MAX_TURNS": "9", "HUSKIES_MAX_BUDGET_USD": "2.5"},
    )
    assert run.returncode == 0, run.stderr
    result = run.result
    assert set(result) == RESULT_KEYS
    assert result["exit_code"] == 0 and result["error"] == ""
    assert result["pushed"] is True
    assert result["branch"] == BRANCH
    assert result["base_commit"] == ""  # the branch did not exist
    assert (result["story_id"], result["stage"], result["epoch"]) == (STORY_ID, "2_current", 7)
    assert (result["agent_exit_status"], result["turns"], result["cost_usd"]) == (0, 3, 0.0123)
    # The termination message is the same line, and stdout's last line.
    assert run.termination.strip() == run.stdout.strip().splitlines()[-1]
    assert len(run.termination.encode()) < 4096
    # The agent's stream-json went to stdout.
    assert '"type": "system"' in run.stdout and '"type": "result"' in run.stdout

    branches = remote_branches(repo.url)
    assert branches[BRANCH] == result["commit"]
    assert branches["main"] == repo.main_sha  # the base branch is untouched
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "fake_claude_output.txt").read_text() == "the widget\n"
    assert trailers(checkout) == {
        "Huskies-Story": STORY_ID, "Huskies-Stage": "2_current", "Huskies-Claim-Epoch": "7",
        "Huskies-Node": "node-a", "Huskies-Outcome": "completed",
    }
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == repo.main_sha
    subject = git("show", "-s", "--format=%s", "HEAD", cwd=checkout).strip()
    assert STORY_ID in subject

    dumped = json.loads(args_dump.read_text())
    argv = dumped["argv"]
    assert argv[:6] == ["-p", "--output-format", "stream-json", "--verbose", "--permission-mode",
                        "bypassPermissions"]
    assert argv[argv.index("--model") + 1] == "claude-test-model"
    assert argv[argv.index("--max-turns") + 1] == "9"
    assert argv[argv.index("--max-budget-usd") + 1] == "2.5"
    assert STORY_TEXT.strip() in dumped["prompt"]  # the prompt came on stdin
    assert "coder" in dumped["prompt"] and BRANCH in dumped["prompt"]


def test_second_run_resumes_the_existing_branch(tmp_path: Path, repo: StoryRepo) -> None:
    first = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=1)
    assert first.returncode == 0, first.stderr
    args_dump = tmp_path / "args.json"
    second = run_runner(
        tmp_path, story_id=STORY_ID, stage="3_qa", repo_url=repo.url, epoch=2, node="node-b",
        env={"FAKE_CLAUDE_CONTENT": "qa fix", "FAKE_CLAUDE_ARGS_DUMP": str(args_dump)},
    )
    assert second.returncode == 0, second.stderr
    assert second.result["base_commit"] == first.result["commit"]
    assert second.result["pushed"] is True
    assert remote_branches(repo.url)[BRANCH] == second.result["commit"]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first.result["commit"]
    assert (checkout / "fake_claude_output.txt").read_text() == "edited by fake claude\nqa fix\n"
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "2"
    assert trailers(checkout)["Huskies-Stage"] == "3_qa"
    prompt = json.loads(args_dump.read_text())["prompt"]
    assert "QA" in prompt and "continuing the work already on it" in prompt
    # The story was found in 2_current although the run is for 3_qa: the fallback is logged.
    assert "found in .huskies/work/2_current, not in .huskies/work/3_qa" in second.stderr
    assert "origin/main" in prompt


def test_qa_and_merge_see_the_base_branch(tmp_path: Path, repo: StoryRepo) -> None:
    assert run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=1).returncode == 0
    run = run_runner(tmp_path, story_id=STORY_ID, stage="4_merge", repo_url=repo.url, epoch=2,
                     env={"FAKE_CLAUDE_MODE": "noop"})
    assert run.returncode == 0, run.stderr
    checkout = run.workdir / "repo"
    assert git("rev-parse", "origin/main", cwd=checkout).strip() == repo.main_sha
    assert not (checkout / ".git" / "shallow").exists()  # full history for merging


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


def test_agent_commits_are_kept_and_topped_with_the_trailer_commit(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=2,
                     env={"FAKE_CLAUDE_COMMIT": "1"})
    assert run.returncode == 0, run.stderr
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "2"
    assert git("show", "-s", "--format=%s", "HEAD^", cwd=checkout).strip() == "agent's own commit"
    assert git("rev-parse", "HEAD~2", cwd=checkout).strip() == repo.main_sha


def test_coder_without_changes_fails_with_no_changes(tmp_path: Path, repo: StoryRepo) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, env={"FAKE_CLAUDE_MODE": "noop"})
    assert run.returncode == 17
    assert run.result["exit_code"] == 17 and run.result["pushed"] is False
    assert "without changing anything" in run.result["error"]
    assert BRANCH not in remote_branches(repo.url)


@pytest.mark.parametrize("stage", ["3_qa", "4_merge"])
def test_qa_and_merge_without_changes_succeed_without_pushing(
    tmp_path: Path, repo: StoryRepo, stage: str,
) -> None:
    first = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, epoch=1)
    run = run_runner(tmp_path, story_id=STORY_ID, stage=stage, repo_url=repo.url, epoch=2,
                     env={"FAKE_CLAUDE_MODE": "noop"})
    assert run.returncode == 0, run.stderr
    assert run.result["pushed"] is False
    assert run.result["commit"] == run.result["base_commit"] == first.result["commit"]
    assert remote_branches(repo.url)[BRANCH] == first.result["commit"]


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
