"""The Job the operator builds runs the runner with exactly the runner's contract.

The containers' commands, args, env, uids and volumes come from ``build_job``; the test
runs them as local processes (``pod_sim``: init container first, then the agent and the
publisher together) against a real git daemon and the scripted claude, then reads the
result the way the operator does (the result container's termination message).
"""

from __future__ import annotations

import json
from pathlib import Path

from pod_sim import pod_sim
from runner_helpers import FAKE_CLAUDE, STORY_ID, StoryRepo, remote_branches

from huskies_agent import contract
from huskies_agent.k8s import objects
from huskies_agent.pipeline.model import branch_for
from huskies_agent.settings import BuildPodSettings, Settings


def test_operator_job_spec_runs_the_runner(repo: StoryRepo, tmp_path: Path) -> None:
    settings = Settings(namespace="ns", build=BuildPodSettings(
        repo_url=repo.url, base_branch="main", git_secret="git-creds", anthropic_secret="anthropic"))
    run = objects.RunSpec(STORY_ID, "2_current", "node-a", 3)
    job = objects.build_job(settings, run, owner_uid="uid")
    secrets = {("anthropic", "api-key"): "sk-test-not-real"}
    agent_env = {contract.AGENT_CONTAINER: {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE)}}
    with pod_sim(job, secrets, agent_env) as pod:
        runs = pod.run()
        for name, ran in runs.items():
            assert ran.returncode == 0, (name, ran.stdout[-3000:], ran.stderr[-3000:])
        message = runs[contract.RESULT_CONTAINER].termination
        everything = "".join(r.stdout + r.stderr + r.termination for r in runs.values())

    result = objects.parse_result(message)  # exactly what the operator reads from the pod
    branch = branch_for(STORY_ID)
    assert result["pushed"] is True and result["branch"] == branch and result["epoch"] == 3
    assert result["exit_code"] == 0 and set(result) == set(contract.RESULT_FIELDS)
    assert (result["turns"], result["cost_usd"]) == (3, 0.0123)  # the agent's outcome reached the result
    assert remote_branches(repo.url)[branch] == result["commit"]
    assert "sk-test-not-real" not in everything
    assert json.loads(message.strip().splitlines()[-1]) == result
