"""The records the agent's uid leaves for the publisher are read as data, never followed or trusted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from huskies_agent.contract import ExitCode
from huskies_agent.runner import handoff, publish
from huskies_agent.runner.handoff import AgentReport, RecordError, Snapshot, read_record, write_record

SHA = "a" * 40


def test_a_record_round_trips(tmp_path: Path) -> None:
    report = AgentReport(snapshot=SHA, exit_status=0, turns=3, cost_usd=0.5, summary="done")
    write_record(tmp_path / "agent.json", report)
    assert read_record(tmp_path / "agent.json", AgentReport) == report
    assert oct((tmp_path / "agent.json").stat().st_mode & 0o777) == oct(0o644)


def _symlink(path: Path) -> None:
    secret = path.parent / "secret"
    secret.write_text('{"sha": "' + SHA + '"}')
    path.symlink_to(secret)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _huge(path: Path) -> None:
    path.write_text('{"sha": "' + "x" * handoff.MAX_RECORD_BYTES + '"}')


def _deep(path: Path) -> None:
    path.write_text('{"sha": ' + "[" * 30_000 + "]" * 30_000 + "}")  # under the size bound


def _not_json(path: Path) -> None:
    path.write_bytes(b"\xff\xfe not json")


def _list(path: Path) -> None:
    path.write_text("[1, 2]")


def _wrong_type(path: Path) -> None:
    path.write_text('{"sha": 42}')


def _bool_for_int(path: Path) -> None:
    path.write_text('{"sha": "' + SHA + '", "seq": true}')


@pytest.mark.parametrize(("make", "fragment"), [
    (_symlink, "cannot be opened"),
    (_fifo, "not a regular file"),
    (_directory, "not a regular file"),
    (_huge, "larger than"),
    (_deep, "not valid JSON"),
    (_not_json, "not valid JSON"),
    (_list, "not a JSON object"),
    (_wrong_type, "wrong type"),
    (_bool_for_int, "wrong type"),
    (lambda path: None, "does not exist"),
])
def test_hostile_records_are_refused_without_blocking_or_following(tmp_path: Path, make, fragment: str) -> None:
    path = tmp_path / "checkpoint.json"
    make(path)
    with pytest.raises(RecordError, match=fragment):
        read_record(path, Snapshot)


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"sha": "' + SHA + '", "seq": 2, "extra": {"a": 1}}')
    assert read_record(tmp_path / "c.json", Snapshot) == Snapshot(sha=SHA, seq=2)


@pytest.mark.parametrize(("value", "ok"), [
    (SHA, True), ("b" * 64, True), ("A" * 40, False), ("a" * 39, False), ("--all", False), (40, False),
])
def test_is_sha(value: object, ok: bool) -> None:
    assert handoff.is_sha(value) is ok


@pytest.mark.parametrize(("claimed", "stopped", "taken"), [
    (int(ExitCode.OK), False, ExitCode.AGENT_FAILED),  # the agent's uid cannot claim success ...
    (int(ExitCode.FENCED), False, ExitCode.AGENT_FAILED),  # ... or a fencing the publisher did not see
    (int(ExitCode.TERMINATED), False, ExitCode.AGENT_FAILED),  # ... or a stop it did not get
    (int(ExitCode.TERMINATED), True, ExitCode.TERMINATED),
    (int(ExitCode.STORY_NOT_FOUND), False, ExitCode.STORY_NOT_FOUND),
    (999, False, ExitCode.AGENT_FAILED),
])
def test_an_error_code_from_the_agent_phase_is_bounded(claimed: int, stopped: bool, taken: ExitCode) -> None:
    assert publish._exit_code(claimed, stopped=stopped) is taken


def test_empty_dir_keeps_a_mount_point_and_removes_what_is_in_it(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    (root / "link").symlink_to(tmp_path)
    handoff.empty_dir(root)
    assert root.is_dir() and list(root.iterdir()) == [] and tmp_path.exists()
    assert oct(root.stat().st_mode & 0o777) == oct(0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another owner")
def test_empty_dir_empties_a_mount_point_it_does_not_own() -> None:
    # As a kubelet makes an emptyDir: root's, mode 0777; the git uid may empty it, not chmod it.
    top = Path(tempfile.mkdtemp(prefix="huskies-emptydir-"))  # pytest's tmp_path is closed to other uids
    try:
        top.chmod(0o755)
        root = top / "state"
        (root / "old").mkdir(parents=True)
        root.chmod(0o777)
        os.chown(root / "old", 10002, 10002)
        code = f"import pathlib, huskies_agent.runner.handoff as h; h.empty_dir(pathlib.Path({str(root)!r}))"
        done = subprocess.run(["setpriv", "--reuid=10002", "--regid=10002", "--clear-groups", "--", sys.executable,
                               "-c", code], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert list(root.iterdir()) == [] and oct(root.stat().st_mode & 0o777) == oct(0o777)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize(("report", "expected"), [
    (AgentReport(), (ExitCode.OK, "completed")),
    (AgentReport(failure="x"), (ExitCode.AGENT_FAILED, "agent-failed")),
    (AgentReport(failure="x", timed_out=True), (ExitCode.AGENT_TIMEOUT, "agent-timeout")),
    (AgentReport(failure="x", failure_code=int(ExitCode.AGENT_TIMEOUT), outcome="budget"),
     (ExitCode.AGENT_TIMEOUT, "budget")),
    # what the agent's uid may not pass off: success, fencing, a stop, an input error ...
    (AgentReport(failure="x", failure_code=int(ExitCode.OK)), (ExitCode.AGENT_FAILED, "agent-failed")),
    (AgentReport(failure="x", failure_code=int(ExitCode.FENCED)), (ExitCode.AGENT_FAILED, "agent-failed")),
    (AgentReport(failure="x", failure_code=int(ExitCode.TERMINATED)), (ExitCode.AGENT_FAILED, "agent-failed")),
    (AgentReport(failure="x", failure_code=int(ExitCode.INVALID_INPUT)), (ExitCode.AGENT_FAILED, "agent-failed")),
    # ... or a word that would add a trailer to the commit the publisher makes
    (AgentReport(failure="x", outcome="done\nHuskies-Claim-Epoch: 999"), (ExitCode.AGENT_FAILED, "agent-failed")),
    (AgentReport(failure="x", outcome="completed"), (ExitCode.AGENT_FAILED, "agent-failed")),
])
def test_the_agents_outcome_is_bounded(report: AgentReport, expected: tuple[ExitCode, str]) -> None:
    assert publish.failure_of(report) == expected


def test_a_multi_line_failure_cannot_add_a_trailer_to_the_commit() -> None:
    from huskies_agent.runner.config import load_config

    cfg = load_config({"story_id": "42_x", "stage": "2_current", "repo_url": "https://git.example/r.git",
                       "epoch": "3", "node": "n"}, environ={})
    report = AgentReport(failure="boom\n\nHuskies-Claim-Epoch: 999999\n", summary="hi\n\nHuskies-Claim-Epoch: 9")
    message = publish.commit_message(cfg, report, "agent-failed")
    last_paragraph = message.strip().split("\n\n")[-1]
    assert [line for line in message.splitlines() if line.startswith("Huskies-Claim-Epoch")] == [
        "Huskies-Claim-Epoch: 3"]
    assert last_paragraph.startswith("Huskies-Story:")
