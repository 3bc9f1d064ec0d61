"""The Job the operator builds runs the runner with exactly the runner's contract.

The container's command, args and env come from ``build_job``; the test runs that
command line as a local process against a real git daemon and the scripted claude,
then reads the result the way the operator does (termination message).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runner_helpers import FAKE_CLAUDE, STORY_ID, StoryRepo, base_env, remote_branches

from huskies_agent.k8s import objects
from huskies_agent.pipeline.model import branch_for
from huskies_agent.settings import BuildPodSettings, Settings


def container_process(job: dict, secrets: dict[tuple[str, str], str], tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Turn the Job's container into a local argv/env, as the kubelet would start it."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "huskies-agent"
    argv = [sys.executable, "-m", "huskies_agent", *container["command"][1:], *container["args"]]
    env = base_env(tmp)
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets.get((ref["name"], ref["key"]))
            if value is not None:
                env[item["name"]] = value
    # Paths that are volumes in the pod become temp dirs here.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert objects.WORKDIR in mounts and container["terminationMessagePath"] == env["HUSKIES_TERMINATION_LOG"]
    env["HUSKIES_WORKDIR"] = str(tmp / "work")
    env["HOME"] = str(tmp / "work" / "home")
    env["HUSKIES_TERMINATION_LOG"] = str(tmp / "termination-log")
    env["HUSKIES_CLAUDE_BIN"] = str(FAKE_CLAUDE)
    return argv, env


def test_operator_job_spec_runs_the_runner(repo: StoryRepo, tmp_path: Path) -> None:
    settings = Settings(namespace="ns", build=BuildPodSettings(
        repo_url=repo.url, base_branch="main", git_secret="git-creds", anthropic_secret="anthropic"))
    run = objects.RunSpec(STORY_ID, "2_current", "node-a", 3)
    job = objects.build_job(settings, run, owner_uid="uid")
    argv, env = container_process(job, {("anthropic", "api-key"): "sk-test-not-real"}, tmp_path)

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    message = (tmp_path / "termination-log").read_text()
    result = objects.parse_result(message)  # exactly what the operator reads from the pod
    branch = branch_for(STORY_ID)
    assert result["pushed"] is True and result["branch"] == branch and result["epoch"] == 3
    assert remote_branches(repo.url)[branch] == result["commit"]
    assert "sk-test-not-real" not in done.stdout + done.stderr + message
    assert json.loads(message.strip().splitlines()[-1]) == result
