"""Unit tests of the runner's pieces (no git server, no agent process)."""

from __future__ import annotations

import io
import json
import logging
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from huskies_agent import cli
from huskies_agent.runner import agent, config, credentials, prompt, redact, story
from huskies_agent.runner.result import MAX_MESSAGE_BYTES, ExitCode, RunnerError, RunResult

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- result

def test_result_json_stays_under_the_termination_message_limit() -> None:
    result = RunResult(story_id="s" * 5000, stage="2_current", branch="b" * 5000, error="é" * 100_000,
                       exit_code=16, epoch=3)
    line = result.to_json()
    assert len(line.encode()) <= MAX_MESSAGE_BYTES
    assert "\n" not in line
    data = json.loads(line)
    assert data["exit_code"] == 16 and data["epoch"] == 3
    assert data["error"].endswith("...")


def test_result_json_shape() -> None:
    data = json.loads(RunResult().to_json())
    assert list(data) == ["story_id", "stage", "branch", "commit", "base_commit", "pushed", "exit_code",
                          "error", "agent_exit_status", "turns", "cost_usd", "epoch"]


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [int(c) for c in ExitCode]
    assert len(codes) == len(set(codes))
    assert all(c < 126 for c in codes)  # never confused with shell or signal statuses
    doc = (REPO_ROOT / "docs" / "runner.md").read_text()
    table = dict(re.findall(r"^\|\s*(\d+)\s*\|\s*`?([A-Z_]+)`?\s*\|", doc, re.MULTILINE))
    for code in ExitCode:
        assert table.get(str(int(code))) == code.name, f"docs/runner.md does not list {code.name}"
    import huskies_agent.runner.result as result_module

    for code in ExitCode:
        assert re.search(rf"^{int(code)}\s+{code.name}\b", result_module.__doc__ or "", re.MULTILINE)


# ---------------------------------------------------------------------- redaction

def test_redactor_replaces_longest_secrets_first_and_ignores_short_values() -> None:
    r = redact.Redactor(["abcdef123456", "abcdef123456-longer", "abc"])
    assert r.redact("x abcdef123456-longer y abcdef123456 abc") == "x <redacted> y <redacted> abc"
    assert redact.Redactor().redact("nothing") == "nothing"


def test_secret_env_values_by_name() -> None:
    found = redact.secret_env_values({
        "HUSKIES_GIT_TOKEN": "tok-123456", "ANTHROPIC_API_KEY": "sk-123456", "DB_PASSWORD": "pw-123456",
        "HUSKIES_GIT_SSH_KEY_FILE": "/var/run/key", "PATH": "/usr/bin:/bin", "SHORT_TOKEN": "abc",
    })
    assert sorted(found) == ["pw-123456", "sk-123456", "tok-123456"]


def test_log_filter_redacts_message_args_extras_and_tracebacks() -> None:
    redactor = redact.Redactor(["topsecret-value"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(traceback)s %(extra_field)s"))
    handler.addFilter(redact.RedactingFilter(redactor))
    logger = logging.getLogger("test_runner_units.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom topsecret-value")
        except ValueError:
            logger.exception("value %s", "topsecret-value", extra={"extra_field": "x topsecret-value"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "topsecret-value" not in text
    assert text.count("<redacted>") >= 3 and "ValueError" in text


# ---------------------------------------------------------------------- config

GOOD = {"story_id": "42_x", "stage": "2_current", "repo_url": "https://example.invalid/r.git",
        "base_branch": "main", "epoch": "3", "node": "abc123"}


def test_config_options_win_over_env() -> None:
    env = {"HUSKIES_STORY_ID": "43_y", "HUSKIES_EPOCH": "9", "HUSKIES_NODE_ID": "env-node",
           "HUSKIES_WORKDIR": "/tmp/w"}
    cfg = config.load_config({**GOOD, "node": None}, env)
    assert (cfg.story_id, cfg.epoch, cfg.node) == ("42_x", 3, "env-node")
    assert cfg.branch == "feature/story-42_x" and cfg.role == "coder"
    assert cfg.workdir == Path("/tmp/w")
    assert cfg.max_budget_usd is None and cfg.max_turns is None


def test_config_defaults_and_limits() -> None:
    env = {"HUSKIES_MAX_TURNS": "200", "HUSKIES_MAX_BUDGET_USD": "0.0", "HUSKIES_AGENT_TIMEOUT_SECONDS": "60"}
    cfg = config.load_config({**GOOD, "base_branch": None}, env)
    assert cfg.base_branch == "main"
    assert cfg.max_turns == 200 and cfg.max_budget_usd is None and cfg.agent_timeout_seconds == 60
    assert cfg.claude_bin == "claude" and cfg.termination_log == "/dev/termination-log"
    assert cfg.workdir == Path("/work")


@pytest.mark.parametrize("url", [
    "https://github.com/o/r.git", "ssh://git@example.com:2222/o/r.git", "git@github.com:o/r.git",
    "git://127.0.0.1:9418/r.git", "file:///srv/r.git", "https://user@example.com/r.git",
])
def test_repo_urls_accepted(url: str) -> None:
    config.check_repo_url(url)


@pytest.mark.parametrize("url", [
    "", "-u", "ext::sh -c x", "https://u:p@host/r", "ftp://host/r", "https:///nohost", "a b", "relative/path",
])
def test_repo_urls_refused(url: str) -> None:
    with pytest.raises(RunnerError) as info:
        config.check_repo_url(url)
    assert info.value.code is ExitCode.INVALID_INPUT


# ---------------------------------------------------------------------- credentials

def test_credential_helper_answers_only_for_the_repo_host(tmp_path: Path) -> None:
    auth = credentials.GitAuth(repo_url="https://git.example.com:8443/o/r.git", token="tok-abcdef",
                               username="bot", ssh_key_file="", known_hosts_file="", state_dir=tmp_path / "s")
    auth.prepare()
    env = auth.git_env({"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "sk-should-not-pass"})
    assert "ANTHROPIC_API_KEY" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    keys = [env[f"GIT_CONFIG_KEY_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    values = [env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    assert keys[:2] == ["credential.helper", "credential.helper"] and values[0] == ""
    assert "tok-abcdef" not in "".join(values)  # the token is not in the config, only in env
    assert auth.helper_path is not None and "tok-abcdef" not in auth.helper_path.read_text()

    def ask(host: str, protocol: str = "https") -> str:
        done = subprocess.run([sys.executable, str(auth.helper_path), "get"],
                              input=f"protocol={protocol}\nhost={host}\n\n", env=env,
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    assert ask("git.example.com:8443") == "username=bot\npassword=tok-abcdef\n"
    assert ask("evil.example.com") == ""
    assert ask("git.example.com:8443", protocol="http") == ""


def test_git_credentials_through_git_itself(tmp_path: Path) -> None:
    auth = credentials.GitAuth(repo_url="https://git.example.com/o/r.git", token="tok-abcdef",
                               username="x-access-token", ssh_key_file="", known_hosts_file="",
                               state_dir=tmp_path / "s")
    auth.prepare()
    env = auth.git_env({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    done = subprocess.run(["git", "credential", "fill"], input="url=https://git.example.com/o/r.git\n\n",
                          env=env, capture_output=True, text=True, timeout=30, check=True)
    assert "password=tok-abcdef" in done.stdout and "username=x-access-token" in done.stdout


def test_ssh_key_is_copied_private_and_used(tmp_path: Path) -> None:
    key = tmp_path / "mounted-key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    key.chmod(0o440)
    known = tmp_path / "known_hosts"
    known.write_text("example.com ssh-ed25519 AAAA\n")
    for known_file, strict in (("", "accept-new"), (str(known), "yes")):
        auth = credentials.GitAuth(repo_url="git@example.com:o/r.git", token="tok-abcdef", username="u",
                                   ssh_key_file=str(key), known_hosts_file=known_file,
                                   state_dir=tmp_path / f"s-{strict}")
        auth.prepare()
        env = auth.git_env({"PATH": "/usr/bin"})
        copy = tmp_path / f"s-{strict}" / "ssh-key"
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert f"-i {copy}" in env["GIT_SSH_COMMAND"]
        assert f"StrictHostKeyChecking={strict}" in env["GIT_SSH_COMMAND"]
        assert "HUSKIES_GIT_TOKEN" not in env  # the token is for https only


def test_agent_env_drops_git_credentials_and_claudecode(tmp_path: Path) -> None:
    env = credentials.agent_env({
        "ANTHROPIC_API_KEY": "sk-x", "HUSKIES_GIT_TOKEN": "t", "CLAUDECODE": "1", "GIT_SSH_COMMAND": "ssh",
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "c", "PATH": "/bin",
    }, home=tmp_path)
    assert env == {"ANTHROPIC_API_KEY": "sk-x", "PATH": "/bin", "HOME": str(tmp_path), "DISABLE_AUTOUPDATER": "1"}


# ---------------------------------------------------------------------- story and prompt

def test_story_lookup_prefers_exact_name_and_skips_symlinks(tmp_path: Path) -> None:
    folder = tmp_path / ".huskies" / "work" / "3_qa"
    folder.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    (folder / "5_link.md").symlink_to(secret)
    with pytest.raises(RunnerError) as info:
        story.find_story(tmp_path, "5", "3_qa")
    assert info.value.code is ExitCode.STORY_NOT_FOUND
    (folder / "5_slug.md").write_text("slug")
    (folder / "5.md").write_text("exact")
    found = story.find_story(tmp_path, "5", "3_qa")
    assert found.text == "exact" and found.fallback_note("3_qa") == ""
    other = story.find_story(tmp_path, "5", "2_current")
    assert other.found_in == "3_qa" and "not in .huskies/work/2_current" in other.fallback_note("2_current")


def test_long_story_is_cut(tmp_path: Path) -> None:
    folder = tmp_path / ".huskies" / "work" / "2_current"
    folder.mkdir(parents=True)
    (folder / "8.md").write_bytes(b"x" * (story.MAX_STORY_BYTES + 10))
    found = story.find_story(tmp_path, "8", "2_current")
    assert found.truncated and len(found.text) == story.MAX_STORY_BYTES


@pytest.mark.parametrize(("stage", "word"), [("2_current", "coder"), ("3_qa", "QA"), ("4_merge", "mergemaster")])
def test_prompt_per_role(stage: str, word: str) -> None:
    text = prompt.build_prompt(prompt.PromptInputs(
        story_id="9_z", stage=stage, branch="feature/story-9_z", base_branch="trunk", epoch=2,
        story_path=".huskies/work/2_current/9_z.md", story_text="# Do the thing\n", resumed=stage != "2_current",
    ))
    assert f"You are the {word}" in text or f"You are {word}" in text
    assert "<<<STORY 9_z\n# Do the thing\nSTORY 9_z>>>" in text
    assert "feature/story-9_z" in text
    if stage != "2_current":
        assert "origin/trunk" in text


# ---------------------------------------------------------------------- agent

def test_claude_command_flags() -> None:
    assert agent.claude_command("claude") == [
        "claude", "-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions",
    ]
    cmd = agent.claude_command("/opt/claude", model="opus", max_turns=5, max_budget_usd=1.25)
    assert cmd[-6:] == ["--model", "opus", "--max-turns", "5", "--max-budget-usd", "1.25"]


def test_run_agent_reads_the_result_line_and_redacts(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(
        "import json, sys\n"
        "prompt = sys.stdin.read()\n"
        "print('not json: secret-value-1234')\n"
        "print(json.dumps({'type': 'result', 'is_error': False, 'num_turns': 4, 'total_cost_usd': 0.5,"
        " 'result': 'echo ' + prompt}))\n"
    )
    sink = io.StringIO()
    outcome = agent.run_agent(
        [sys.executable, str(script)], prompt="hello secret-value-1234", cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"}, timeout=30, redactor=redact.Redactor(["secret-value-1234"]), sink=sink,
    )
    assert outcome.succeeded and outcome.turns == 4 and outcome.cost_usd == 0.5
    assert outcome.summary == "echo hello <redacted>"
    assert "secret-value-1234" not in sink.getvalue() and "not json: <redacted>" in sink.getvalue()


# ---------------------------------------------------------------------- CLI

def test_run_story_is_registered_with_the_contract_options() -> None:
    args = cli.build_parser().parse_args([
        "run-story", "--story-id", "1_a", "--stage", "3_qa", "--repo-url", "u", "--base-branch", "b",
        "--epoch", "4", "--node", "n",
    ])
    assert (args.story_id, args.stage, args.repo_url, args.base_branch, args.epoch, args.node) == (
        "1_a", "3_qa", "u", "b", "4", "n")
    empty = cli.build_parser().parse_args(["run-story"])
    assert empty.story_id is None and empty.epoch is None
