"""The real Claude Code CLI, run by the real runner, against the scripted Messages API: runs that work.

Each test scripts the model's turns, runs ``huskies-agent run-story`` (as an
unprivileged uid when the tests run as root), and checks the pushed branch, the result
and what the model server received: the prompt, the tools, the tool results.
"""

from __future__ import annotations

from pathlib import Path

from real_cli import Sandbox, agent_events, run_real
from runner_helpers import STORY_ID, STORY_TEXT, StoryRepo, clone_branch, git, remote_branches, trailers
from tests.helpers.model_server import ModelServer, Reply, request_text, text, tool_use

BRANCH = f"feature/story-{STORY_ID}"
RESULT_KEYS = {
    "story_id", "stage", "branch", "commit", "base_commit", "pushed", "exit_code", "error",
    "agent_exit_status", "turns", "cost_usd", "epoch",
}


def _first_user_text(server: ModelServer) -> str:
    body = server.main_requests[0].body
    first = body["messages"][0]
    assert first["role"] == "user"
    content = first["content"]
    if isinstance(content, str):
        return content
    return "\n".join(str(block.get("text", "")) for block in content if isinstance(block, dict))


def test_edit_and_commit(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    story_file = f".huskies/work/2_current/{STORY_ID}.md"
    script = [
        Reply([text("I will add the widget."),
               tool_use("Write", {"file_path": "widget.py", "content": "WIDGET = True\n"})]),
        Reply([tool_use("Read", {"file_path": story_file})], expect_tool_result="widget.py",
              expect_tool_error=False),
        Reply([tool_use("Edit", {"file_path": story_file, "old_string": "- [ ] the widget exists",
                                 "new_string": "- [x] the widget exists"})],
              expect_tool_result="- [ ] the widget exists"),
        Reply([text("Added widget.py and ticked the criterion.")], expect_tool_result=story_file,
              expect_tool_error=False),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url, epoch=7,
                       env={"HUSKIES_MODEL": "claude-sonnet-4-5", "HUSKIES_MAX_TURNS": "9",
                            "HUSKIES_MAX_BUDGET_USD": "2.5"})
    assert server.problems == []
    assert server.unused_steps == 0
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.result
    assert set(result) >= RESULT_KEYS
    assert result["exit_code"] == 0 and result["error"] == "" and result["pushed"] is True
    assert result["branch"] == BRANCH and result["base_commit"] == ""  # the branch did not exist
    assert (result["story_id"], result["stage"], result["epoch"]) == (STORY_ID, "2_current", 7)
    assert result["agent_exit_status"] == 0
    # The termination message is the same line, and stdout's last line; the CLI's stream-json is above it.
    assert run.termination.strip() == run.stdout.strip().splitlines()[-1]
    assert len(run.termination.encode()) < 4096
    assert {"system", "assistant", "user", "result"} <= {e.get("type") for e in agent_events(run)}
    # Turns and cost come from the CLI's own result event.
    final = [e for e in agent_events(run) if e.get("type") == "result"][-1]
    assert result["turns"] == final["num_turns"] == 4
    assert result["cost_usd"] == final["total_cost_usd"] and isinstance(result["cost_usd"], float)
    assert result["cost_usd"] > 0

    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert (checkout / "widget.py").read_text() == "WIDGET = True\n"
    assert "- [x] the widget exists" in (checkout / story_file).read_text()
    assert trailers(checkout) == {
        "Huskies-Story": STORY_ID, "Huskies-Stage": "2_current", "Huskies-Claim-Epoch": "7",
        "Huskies-Node": "node-a", "Huskies-Outcome": "completed",
    }
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == repo.main_sha
    assert STORY_ID in git("show", "-s", "--format=%s", "HEAD", cwd=checkout)
    assert remote_branches(repo.url)["main"] == repo.main_sha  # the base branch is untouched
    body = git("show", "-s", "--format=%b", "HEAD", cwd=checkout)
    assert "> Added widget.py and ticked the criterion." in body
    assert remote_branches(repo.url)[BRANCH] == result["commit"]

    # What reached the model: the runner's prompt as the first user message, the tools it may use.
    first = server.main_requests[0].body
    # The CLI took the runner's flags: --model reached the API, --max-budget-usd its accounting.
    assert first["model"] == "claude-sonnet-4-5"
    assert "/$2.5" in request_text(server.main_requests[1].body)
    assert first["stream"] is True
    assert {"Bash", "Edit", "Write", "Read"} <= {tool["name"] for tool in first["tools"]}
    prompt = _first_user_text(server)
    assert "You are the coder for this story." in prompt
    assert f"Branch: {BRANCH} (new, started from main)" in prompt
    assert f"Story file: {story_file}" in prompt
    assert f"<<<STORY {STORY_ID}\n{STORY_TEXT.rstrip()}\nSTORY {STORY_ID}>>>" in prompt
    assert "Rules of this run" in prompt
    # The CLI ran in the checkout: its system prompt names the working directory.
    assert str(run.workdir / "repo") in request_text(first)
    # The key went to the model API in the header, nowhere in the body.
    headers = server.main_requests[0].headers
    assert headers.get("x-api-key") == "sk-ant-test-key-for-the-scripted-server"
    assert "sk-ant-test-key" not in request_text(first)
    assert "sk-ant-test-key" not in run.stdout + run.stderr


def test_no_changes(box: Sandbox, repo: StoryRepo) -> None:
    with ModelServer([Reply([text("The widget already exists; nothing to do.")])]) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert server.problems == []
    assert run.returncode == 17, run.stderr[-3000:]
    assert run.result["exit_code"] == 17 and run.result["pushed"] is False
    assert "without changing anything" in str(run.result["error"])
    assert run.result["turns"] == 1
    assert list(remote_branches(repo.url)) == ["main"]


def test_agent_commits_by_itself(box: Sandbox, repo: StoryRepo, tmp_path: Path) -> None:
    script = [
        Reply([tool_use("Write", {"file_path": "widget.txt", "content": "a widget\n"})]),
        Reply([tool_use("Bash", {"command": "git add -A && git commit -q -m 'Add the widget' && git log --oneline -1",
                                 "description": "commit the widget"})],
              expect_tool_result="widget.txt"),
        Reply([text("Committed.")], expect_tool_result="Add the widget", expect_tool_error=False),
    ]
    with ModelServer(script) as server:
        run = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url)
    assert server.problems == []
    assert run.returncode == 0, run.stderr[-3000:]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    # The agent's commit is kept; the runner adds an empty commit carrying the trailers on top.
    assert git("show", "-s", "--format=%s", "HEAD^", cwd=checkout).strip() == "Add the widget"
    assert git("diff", "--stat", "HEAD^", "HEAD", cwd=checkout).strip() == ""
    assert git("rev-parse", "HEAD~2", cwd=checkout).strip() == repo.main_sha
    assert trailers(checkout)["Huskies-Outcome"] == "completed"
    assert (checkout / "widget.txt").read_text() == "a widget\n"


def test_qa_and_merge_resume_the_branch_and_see_its_history(
    box: Sandbox, repo: StoryRepo, tmp_path: Path,
) -> None:
    coder = [
        Reply([tool_use("Write", {"file_path": "widget.txt", "content": "a widget\n"})]),
        Reply([text("Done.")]),
    ]
    with ModelServer(coder) as server:
        first = run_real(box, server.url, story_id=STORY_ID, repo_url=repo.url, epoch=1)
    assert first.returncode == 0, first.stderr[-3000:]

    # QA reads the branch's history, fixes a defect and approves: its fix is pushed on top.
    qa = [
        Reply([tool_use("Bash", {"command": "git log --format=%s origin/main..HEAD && cat widget.txt",
                                 "description": "what the branch changes"})]),
        Reply([tool_use("Bash", {"command": "echo 'a tested widget' > widget.txt",
                                 "description": "fix the widget"})],
              expect_tool_result="huskies: coder work on story"),
        Reply([text("APPROVED after a small fix.")]),
    ]
    with ModelServer(qa) as server:
        second = run_real(box, server.url, story_id=STORY_ID, stage="3_qa", repo_url=repo.url, epoch=2,
                          node="node-b")
    assert server.problems == []
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.result["pushed"] is True
    assert second.result["base_commit"] == first.result["commit"]
    prompt = _first_user_text(server)
    assert "You are QA for this story." in prompt
    assert f"Branch: {BRANCH} (continuing the work already on it)" in prompt
    assert "git diff origin/main...HEAD" in prompt
    assert "story file found in .huskies/work/2_current, not in .huskies/work/3_qa" in prompt
    assert "a widget" in request_text(server.main_requests[1].body)  # the tool result showed the earlier work
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert git("rev-parse", "HEAD^", cwd=checkout).strip() == first.result["commit"]
    assert (checkout / "widget.txt").read_text() == "a tested widget\n"
    assert trailers(checkout)["Huskies-Stage"] == "3_qa" and trailers(checkout)["Huskies-Claim-Epoch"] == "2"
    assert trailers(checkout)["Huskies-Node"] == "node-b"

    # The mergemaster sees the base branch with full history; finding nothing to do is fine.
    merge = [
        Reply([tool_use("Bash", {"command": "git rev-parse origin/main && git merge origin/main",
                                 "description": "merge the base branch"})]),
        Reply([text("Already up to date; ready to land.")], expect_tool_result=repo.main_sha),
    ]
    with ModelServer(merge) as server:
        third = run_real(box, server.url, story_id=STORY_ID, stage="4_merge", repo_url=repo.url, epoch=3)
    assert server.problems == []
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.result["pushed"] is False
    assert third.result["commit"] == third.result["base_commit"] == second.result["commit"]
    assert "You are the mergemaster for this story." in _first_user_text(server)
    assert "Already up to date" in request_text(server.main_requests[1].body)
    assert not (third.workdir / "repo" / ".git" / "shallow").exists()
    assert remote_branches(repo.url)[BRANCH] == second.result["commit"]
