"""Secrets: never in logs, stdout or the termination message; only where they belong.

The git token works over HTTPS-style auth against ``git http-backend`` on loopback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from runner_helpers import (
    STORY_ID,
    STORY_TEXT,
    GitDaemon,
    GitHttpServer,
    RunnerRun,
    StoryRepo,
    free_port,
    git,
    make_story_repo,
    run_runner,
)

GIT_TOKEN = "ghp_TESTSECRETgittoken0123456789"
ANTHROPIC_KEY = "sk-ant-TESTSECRET-anthropic-0123456789"
OTHER_PASSWORD = "pw-TESTSECRET-other-42"
SECRETS = (GIT_TOKEN, ANTHROPIC_KEY, OTHER_PASSWORD)
BRANCH = f"feature/story-{STORY_ID}"


def secret_env(**extra: str) -> dict[str, str]:
    return {
        "HUSKIES_GIT_TOKEN": GIT_TOKEN,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "MY_SERVICE_PASSWORD": OTHER_PASSWORD,
        "CLAUDECODE": "1",
        # The fake agent leaks every secret it can see, on stdout and stderr.
        "FAKE_CLAUDE_PRINT_ENV": "ANTHROPIC_API_KEY,HUSKIES_GIT_TOKEN,MY_SERVICE_PASSWORD",
        "FAKE_CLAUDE_RESULT": f"finished; by the way the key is {ANTHROPIC_KEY}",
        **extra,
    }


def assert_no_secret(run: RunnerRun) -> None:
    for secret in SECRETS:
        assert secret not in run.stdout, f"secret in stdout: {secret[:8]}"
        assert secret not in run.stderr, f"secret in the log: {secret[:8]}"
        assert secret not in run.termination, f"secret in the termination message: {secret[:8]}"


def files_containing(root: Path, needle: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle.encode() in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def test_secrets_are_redacted_on_success(tmp_path: Path, repo: StoryRepo) -> None:
    env_dump = tmp_path / "agent-env.json"
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url,
                     env=secret_env(FAKE_CLAUDE_ENV_DUMP=str(env_dump)))
    assert run.returncode == 0, run.stderr
    assert_no_secret(run)
    assert "ANTHROPIC_API_KEY=<redacted>" in run.stdout
    # The agent had the Anthropic key, but no git credentials and no CLAUDECODE.
    agent_env = json.loads(env_dump.read_text())
    assert agent_env["ANTHROPIC_API_KEY"] == ANTHROPIC_KEY
    assert "HUSKIES_GIT_TOKEN" not in agent_env
    assert "CLAUDECODE" not in agent_env
    assert not any(k.startswith("GIT_CONFIG") for k in agent_env)
    assert "GIT_SSH_COMMAND" not in agent_env
    assert agent_env["HOME"] == str(run.workdir / "home")
    # Nothing in the workdir holds the git token (no helper secret, no .git/config URL).
    assert files_containing(run.workdir, GIT_TOKEN) == []
    # The agent's summary went into the commit message, redacted.
    message = git("log", "-1", "--format=%B", BRANCH, cwd=repo.bare)
    assert "the key is <redacted>" in message and ANTHROPIC_KEY not in message


@pytest.mark.parametrize("mode", ["crash", "error", "hang"])
def test_secrets_are_redacted_when_the_agent_fails(tmp_path: Path, repo: StoryRepo, mode: str) -> None:
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url,
                     env=secret_env(FAKE_CLAUDE_MODE=mode, HUSKIES_AGENT_TIMEOUT_SECONDS="2"))
    assert run.returncode in (15, 16), run.stderr
    assert_no_secret(run)
    assert "<redacted>" in run.stdout


def test_secrets_are_redacted_when_git_fails(tmp_path: Path) -> None:
    # The token appears in the URL path: git's error names the URL.
    url = f"git://127.0.0.1:{free_port()}/{GIT_TOKEN}.git"
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=url, env=secret_env())
    assert run.returncode == 12
    assert_no_secret(run)


def test_password_in_repo_url_is_refused_and_redacted(tmp_path: Path) -> None:
    url = f"https://someone:{OTHER_PASSWORD}@example.invalid/x.git"
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=url, env=secret_env())
    assert run.returncode == 10
    assert_no_secret(run)


def test_secret_in_a_bad_story_id_is_redacted(tmp_path: Path, daemon: GitDaemon) -> None:
    run = run_runner(tmp_path, story_id=f"x/{ANTHROPIC_KEY}", repo_url=daemon.url("x.git"), env=secret_env())
    assert run.returncode == 10
    assert_no_secret(run)


@pytest.fixture
def http_repo(tmp_path: Path) -> tuple[GitHttpServer, Path]:
    root = tmp_path / "http-root"
    root.mkdir()
    bare = root / "project.git"
    make_story_repo(bare, {f".huskies/work/2_current/{STORY_ID}.md": STORY_TEXT})
    git("config", "http.receivepack", "true", cwd=bare)
    return GitHttpServer(root, GitHttpServer.basic("x-access-token", GIT_TOKEN)), bare


def test_https_token_reaches_git_through_the_credential_helper(
    tmp_path: Path, http_repo: tuple[GitHttpServer, Path],
) -> None:
    server, bare = http_repo
    with server:
        run = run_runner(tmp_path, story_id=STORY_ID, repo_url=server.url("project.git"), env=secret_env())
    assert run.returncode == 0, run.stderr + run.stdout
    assert run.result["pushed"] is True
    assert git("rev-parse", BRANCH, cwd=bare).strip() == run.result["commit"]
    assert any(auth == GitHttpServer.basic("x-access-token", GIT_TOKEN) for _m, _p, auth in server.requests)
    assert_no_secret(run)
    config = (run.workdir / "repo" / ".git" / "config").read_text()
    assert GIT_TOKEN not in config and "credential" not in config
    assert files_containing(run.workdir, GIT_TOKEN) == []


@pytest.mark.parametrize("token", ["", "ghp_TESTSECRETwrongtoken999"], ids=["no-token", "wrong-token"])
def test_https_without_the_right_token_cannot_clone(
    tmp_path: Path, http_repo: tuple[GitHttpServer, Path], token: str,
) -> None:
    server, _bare = http_repo
    env = secret_env()
    env["HUSKIES_GIT_TOKEN"] = token
    with server:
        run = run_runner(tmp_path, story_id=STORY_ID, repo_url=server.url("project.git"), env=env)
    assert run.returncode == 12, run.stderr
    assert run.result["exit_code"] == 12
    assert_no_secret(run)
    if token:
        assert token not in run.all_output


def test_runner_environment_is_not_leaked_through_os_environ(tmp_path: Path) -> None:
    # Sanity check for the tests themselves: the test process does not carry the planted secrets.
    for secret in SECRETS:
        assert secret not in os.environ.values()
