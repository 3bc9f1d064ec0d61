"""Fixtures for the story runner tests: a git daemon on loopback and story repositories."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from real_cli import Sandbox, check_test_uid_can_run_the_runner, install_cli, reachable_cli, sandbox
from runner_helpers import STORY_ID, STORY_TEXT, GitDaemon, StoryRepo, make_story_repo


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    root = tmp_path / "srv"
    root.mkdir()
    server = GitDaemon(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_repo(daemon: GitDaemon) -> Callable[..., StoryRepo]:
    def make(name: str = "project.git", files: Mapping[str, str] | None = None) -> StoryRepo:
        if files is None:
            files = {
                "README.md": "a project\n",
                f".huskies/work/2_current/{STORY_ID}.md": STORY_TEXT,
            }
        bare = daemon.root / name
        sha = make_story_repo(bare, files)
        return StoryRepo(name, daemon.url(name), bare, sha)

    return make


@pytest.fixture
def repo(make_repo: Callable[..., StoryRepo]) -> StoryRepo:
    return make_repo()


@pytest.fixture(scope="session")
def claude_cli() -> Iterator[Path]:
    """The real Claude Code CLI, the version the Dockerfile pins, where the test uid can run it."""
    try:
        installed = install_cli()
        check_test_uid_can_run_the_runner()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with reachable_cli(installed) as path:
        yield path


@pytest.fixture
def box(claude_cli: Path) -> Iterator[Sandbox]:
    """A sandbox owned by the unprivileged test uid (when the tests run as root)."""
    with sandbox(claude_cli) as made:
        yield made
