"""tools/claude-cli/install.sh: the pinned version, the cache, and loud failures."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from real_cli import INSTALL_SCRIPT, REPO_ROOT

PINNED = re.search(r"^ARG CLAUDE_CODE_VERSION=(\S+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)


def _install(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_installed_cli_is_the_dockerfile_version_and_cached(claude_cli: Path) -> None:
    assert PINNED is not None
    done = _install({})  # the session fixture installed it: this run only finds it
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent.parent.name == "claude-code" and (path.parent / "VERSION").read_text().strip() == PINNED[1]
    assert "installing" not in done.stderr
    version = subprocess.run([str(claude_cli), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.startswith(PINNED[1])


def test_a_binary_of_another_version_fails_loudly(tmp_path: Path) -> None:
    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\necho '1.0.0 (Claude Code)'\n")
    fake.chmod(0o755)
    done = _install({"HUSKIES_CLAUDE_CLI": str(fake)})
    assert done.returncode != 0
    assert "INSTALL FAILED at step" in done.stderr and "expected version" in done.stderr


def test_a_missing_binary_fails_loudly(tmp_path: Path) -> None:
    done = _install({"HUSKIES_CLAUDE_CLI": str(tmp_path / "nothing")})
    assert done.returncode != 0
    assert "INSTALL FAILED at step" in done.stderr


def test_npm_failure_fails_loudly(tmp_path: Path) -> None:
    """A failing npm (here: an empty cache root and no registry) names the npm step."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\necho 'npm ERR! network' >&2\nexit 1\n")
    npm.chmod(0o755)
    done = _install({"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode != 0
    assert "INSTALL FAILED at step: npm install @anthropic-ai/claude-code@" in done.stderr
    assert not any((tmp_path / "cache" / "huskies-agent" / "claude-code").glob("[0-9a-f]*"))
