"""The story pod's layout keeps the git credentials away from the agent's container."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from huskies_agent import contract
from huskies_agent.commands import run_story_cmd
from huskies_agent.k8s import buildpod, objects
from huskies_agent.settings import BuildPodSettings, Settings

RUN = objects.RunSpec("42_feature", "3_qa", "node-1", 7)


def pod_of(**build: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"repo_url": "https://git.example/repo.git", "git_secret": "git",
                              "anthropic_secret": "anthropic", **build}
    settings = Settings(namespace="ns", build=BuildPodSettings(**values))
    return objects.build_job(settings, RUN, owner_uid="uid")["spec"]["template"]["spec"]


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["initContainers"] + pod["containers"]}


def mounted(container: dict[str, Any]) -> set[str]:
    return {m["name"] for m in container["volumeMounts"]}


def test_three_containers_in_order_with_their_phase_and_uid() -> None:
    pod = pod_of()
    assert [c["name"] for c in pod["initContainers"]] == [contract.CLONE_CONTAINER]
    assert [c["name"] for c in pod["containers"]] == [contract.AGENT_CONTAINER, contract.PUBLISH_CONTAINER]
    uids = {contract.CLONE_CONTAINER: contract.GIT_UID, contract.AGENT_CONTAINER: contract.AGENT_UID,
            contract.PUBLISH_CONTAINER: contract.GIT_UID}
    args = None
    for name, c in by_name(pod).items():
        assert c["command"] == list(contract.COMMAND)
        assert c["args"][0] == name  # the phase is named like its container
        args = args or c["args"][1:]
        assert c["args"][1:] == args  # one config for all phases
        sc = c["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"]) == (uids[name], uids[name])
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "restartPolicy" not in c  # the init container is a plain one: it must finish first
    assert contract.AGENT_UID != contract.GIT_UID


def test_the_agent_container_has_no_git_secret_and_no_private_state() -> None:
    pod = pod_of()
    containers = by_name(pod)
    agent = containers[contract.AGENT_CONTAINER]
    assert mounted(agent) == {buildpod.WORK_VOLUME, buildpod.AGENT_TMP_VOLUME}
    names = {e["name"] for e in agent["env"]}
    assert not any("GIT" in n for n in names), names
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in agent["env"] if "valueFrom" in e]
    assert refs == ["anthropic"]
    for name in (contract.CLONE_CONTAINER, contract.PUBLISH_CONTAINER):
        c = containers[name]
        assert {buildpod.GIT_SECRET_VOLUME, buildpod.STATE_VOLUME} <= mounted(c)
        assert not any("valueFrom" in e for e in c["env"])  # the token is a file, never in env
        assert not any(e["name"] == contract.ENV_ANTHROPIC_KEY for e in c["env"])
    # /tmp is not shared between the agent and the git uid.
    tmp_of = {n: [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"] for n, c in containers.items()}
    assert tmp_of[contract.AGENT_CONTAINER] != tmp_of[contract.PUBLISH_CONTAINER]


def test_the_publisher_reads_the_workspace_only() -> None:
    publish = by_name(pod_of())[contract.PUBLISH_CONTAINER]
    work = [m for m in publish["volumeMounts"] if m["name"] == buildpod.WORK_VOLUME]
    assert work == [{"name": buildpod.WORK_VOLUME, "mountPath": contract.WORKDIR, "readOnly": True}]
    clone = by_name(pod_of())[contract.CLONE_CONTAINER]
    assert [m.get("readOnly") for m in clone["volumeMounts"] if m["name"] == buildpod.WORK_VOLUME] == [False]


def test_pod_level_settings_do_not_share_groups_processes_or_tokens() -> None:
    pod = pod_of()
    assert "fsGroup" not in pod["securityContext"] and "supplementalGroups" not in pod["securityContext"]
    assert pod["shareProcessNamespace"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 60  # time to stop the agent and push its checkpoint
    secret = [v for v in pod["volumes"] if v["name"] == buildpod.GIT_SECRET_VOLUME]
    assert secret == [{"name": buildpod.GIT_SECRET_VOLUME,
                       "secret": {"secretName": "git", "optional": True, "defaultMode": 0o444}}]


def test_without_a_git_secret_nothing_is_mounted() -> None:
    pod = pod_of(git_secret="")
    assert buildpod.GIT_SECRET_VOLUME not in {v["name"] for v in pod["volumes"]}
    for c in by_name(pod).values():
        assert not any(e["name"].startswith("HUSKIES_GIT") for e in c["env"])


def test_extra_env_and_mounts_go_to_the_agent_only() -> None:
    pod = pod_of(extra_env=({"name": "EXTRA", "value": "1"},),
                 extra_volumes=({"name": "cache", "emptyDir": {}},),
                 extra_volume_mounts=({"name": "cache", "mountPath": "/cache"},))
    for name, c in by_name(pod).items():
        has = any(e["name"] == "EXTRA" for e in c["env"]), "cache" in mounted(c)
        assert has == ((True, True) if name == contract.AGENT_CONTAINER else (False, False))


def test_container_args_parse_with_the_runner_cli() -> None:
    parser = argparse.ArgumentParser()
    run_story_cmd.configure(parser)
    for c in by_name(pod_of()).values():
        ns = parser.parse_args(c["args"])
        assert ns.phase == c["name"]
        assert (ns.story_id, ns.stage, ns.epoch, ns.node) == ("42_feature", "3_qa", "7", "node-1")


@pytest.mark.parametrize("agent_says", ['{"exit_code": 0, "pushed": true}', "", "garbage"])
def test_the_result_is_read_from_the_publisher_not_the_agent(agent_says: str) -> None:
    pod = {"status": {"containerStatuses": [
        {"name": contract.AGENT_CONTAINER, "state": {"terminated": {"exitCode": 0, "message": agent_says}}},
        {"name": contract.PUBLISH_CONTAINER, "state": {"terminated": {
            "exitCode": 14, "message": '{"exit_code": 14, "pushed": false}'}}},
    ]}}
    code, message = objects.pod_termination(pod)
    assert code == contract.ExitCode.FENCED
    assert objects.parse_result(message) == {"exit_code": 14, "pushed": False}


def test_the_checkpoint_interval_setting_reaches_the_publisher_and_the_agent() -> None:
    containers = by_name(pod_of(checkpoint_interval_seconds=90.0))
    for name in (contract.AGENT_CONTAINER, contract.PUBLISH_CONTAINER):
        env = {e["name"]: e.get("value") for e in containers[name].get("env", [])}
        assert env[contract.ENV_CHECKPOINT_INTERVAL] == "90", name
