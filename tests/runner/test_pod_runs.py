"""How the publisher ends a run when the agent's container fails early or dies without a word.

The pod is the operator's own Job spec run by ``pod_sim`` (under the containers' uids
when the tests run as root, else all as this uid).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from pod_sim import PodSim
from runner_helpers import (
    FAKE_CLAUDE,
    STORY_ID,
    StoryRepo,
    clone_branch,
    prepare_run,
    remote_branches,
    run_runner,
    runner_command,
    trailers,
)

from huskies_agent import contract
from huskies_agent.k8s import objects
from huskies_agent.settings import BuildPodSettings, Settings

BRANCH = f"feature/story-{STORY_ID}"


def make_pod(url: str, epoch: int, agent: dict[str, str], publish: dict[str, str] | None = None) -> PodSim:
    settings = Settings(namespace="ns", build=BuildPodSettings(repo_url=url, base_branch="main"))
    job = objects.build_job(settings, objects.RunSpec(STORY_ID, "2_current", "node-a", epoch), owner_uid="uid")
    extra: dict[str, dict[str, str]] = {
        contract.AGENT_CONTAINER: {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE), **agent},
        contract.PUBLISH_CONTAINER: dict(publish or {}),
    }
    return PodSim(job, {}, extra)


def test_a_bad_agent_setting_ends_the_run_with_its_reason(repo: StoryRepo) -> None:
    pod = make_pod(repo.url, 2, {"HUSKIES_MAX_TURNS": "many"})
    try:
        runs = pod.run(timeout=60)
        result: dict[str, Any] = pod.result()
    finally:
        pod.close()
    assert runs[contract.AGENT_CONTAINER].returncode == contract.ExitCode.INVALID_INPUT
    assert result["exit_code"] == contract.ExitCode.INVALID_INPUT and "HUSKIES_MAX_TURNS" in result["error"]
    assert list(remote_branches(repo.url)) == ["main"]


def test_an_agent_container_killed_without_a_report_keeps_its_last_checkpoint(
    repo: StoryRepo, tmp_path: Path,
) -> None:
    slow = {"FAKE_CLAUDE_MODE": "slow", "FAKE_CLAUDE_SLEEP": "600", contract.ENV_CHECKPOINT_INTERVAL: "1"}
    publish = {contract.ENV_CHECKPOINT_INTERVAL: "1", contract.ENV_AGENT_HEARTBEAT_TIMEOUT: "3"}
    pod = make_pod(repo.url, 5, slow, publish)
    try:
        assert pod.run_init()
        pod.start_main()
        deadline = time.monotonic() + 60
        while BRANCH not in remote_branches(repo.url):
            assert time.monotonic() < deadline, "no checkpoint was pushed"
            time.sleep(0.2)
        pod.kill(contract.AGENT_CONTAINER)  # as an OOM kill would: no report, no heartbeat
        runs = pod.wait_main(timeout=60)
        result = pod.result()
    finally:
        pod.close()
    assert runs[contract.AGENT_CONTAINER].returncode is not None and runs[contract.AGENT_CONTAINER].returncode < 0
    assert result["exit_code"] == contract.ExitCode.AGENT_FAILED, result
    assert "without handing over its work" in result["error"] and "last checkpoint" in result["error"]
    assert result["pushed"] is True and remote_branches(repo.url)[BRANCH] == result["commit"]
    checkout = clone_branch(repo.url, BRANCH, tmp_path / "check")
    assert trailers(checkout)["Huskies-Outcome"] == "checkpoint"
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "5"


def test_records_left_in_a_reused_workdir_do_not_reach_the_publisher(repo: StoryRepo, tmp_path: Path) -> None:
    env, workdir = prepare_run(tmp_path, None, tmp_path / "reused")
    (workdir / "out").mkdir(parents=True)
    (workdir / "out" / "agent.json").write_text('{"error_code": 11, "error": "a stale report"}')
    # The clone phase alone (as the init container runs it) clears them before any publisher starts.
    cmd = runner_command(story_id=STORY_ID, stage="2_current", repo_url=repo.url)
    cmd.insert(cmd.index("run-story") + 1, "clone")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not (workdir / "out").exists()
    assert (workdir / "handoff" / "seed.git").is_dir()
    # And a whole run in that workdir is not misled by them.
    run = run_runner(tmp_path, story_id=STORY_ID, repo_url=repo.url, workdir=workdir)
    assert run.returncode == 0, run.stderr
    assert run.result["pushed"] is True and "stale" not in run.all_output
