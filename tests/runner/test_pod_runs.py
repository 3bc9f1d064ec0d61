"""How the publisher ends a run when the agent's container fails early or dies without a word.

The pod is the operator's own Job spec run by ``pod_sim`` (under the containers' uids
when the tests run as root, else all as this uid).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pod_sim import PodSim
from runner_helpers import FAKE_CLAUDE, STORY_ID, StoryRepo, clone_branch, remote_branches, trailers

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
