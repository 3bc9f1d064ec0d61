"""Changing the build pod: uids, security contexts, Secret key names and patches, and what is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from huskies_agent import contract
from huskies_agent.commands import operator_cmd
from huskies_agent.k8s import buildpod, objects
from huskies_agent.settings import BuildPodSettings, Settings, SettingsError

RUN = objects.RunSpec("42_feature", "2_current", "node-1", 7)


def settings_of(**build: Any) -> Settings:
    values: dict[str, Any] = {"repo_url": "https://git.example/repo.git", "git_secret": "git",
                              "anthropic_secret": "anthropic", **build}
    return Settings(namespace="ns", build=BuildPodSettings(**values))


def pod_of(**build: Any) -> dict[str, Any]:
    spec: dict[str, Any] = objects.build_job(settings_of(**build), RUN, owner_uid="uid")["spec"]["template"]["spec"]
    return spec


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["initContainers"] + pod["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ------------------------------------------------------------------------------------------ uids and contexts

def test_defaults_are_unchanged() -> None:
    pod = pod_of()
    assert objects.build_pod_problems(settings_of()) == []
    uids = {n: c["securityContext"]["runAsUser"] for n, c in by_name(pod).items()}
    assert uids == {"clone": 10002, "agent": 10001, "publish": 10002}
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    git = env_of(by_name(pod)["publish"])
    assert git[contract.ENV_GIT_TOKEN_FILE] == "/var/run/secrets/huskies/git/token"
    assert git[contract.ENV_GIT_SSH_KEY_FILE] == "/var/run/secrets/huskies/git/ssh-privatekey"
    assert git[contract.ENV_GIT_KNOWN_HOSTS_FILE] == "/var/run/secrets/huskies/git/known_hosts"
    key = env_of(by_name(pod)["agent"])[contract.ENV_ANTHROPIC_KEY]
    assert key == {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}


def test_uids_and_security_contexts_are_settings() -> None:
    pod = pod_of(agent_uid=1000650001, git_uid=1000650002,
                 container_security_context={"readOnlyRootFilesystem": False,
                                             "seLinuxOptions": {"level": "s0:c26,c5"}},
                 pod_security_context={"seccompProfile": {"type": "Localhost", "localhostProfile": "build.json"}})
    for name, c in by_name(pod).items():
        sc = c["securityContext"]
        uid = 1000650001 if name == "agent" else 1000650002
        assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, uid)
        assert sc["readOnlyRootFilesystem"] is False and sc["seLinuxOptions"] == {"level": "s0:c26,c5"}
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["seccompProfile"]["localhostProfile"] == "build.json"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_secret_key_names_are_settings() -> None:
    pod = pod_of(git_token_key="github-token", git_ssh_private_key_key="id_ed25519",
                 git_known_hosts_key="ssh_known_hosts", anthropic_secret_key="ANTHROPIC_API_KEY")
    for name in ("clone", "publish"):
        env = env_of(by_name(pod)[name])
        assert env[contract.ENV_GIT_TOKEN_FILE] == f"{contract.GIT_SECRET_DIR}/github-token"
        assert env[contract.ENV_GIT_SSH_KEY_FILE] == f"{contract.GIT_SECRET_DIR}/id_ed25519"
        assert env[contract.ENV_GIT_KNOWN_HOSTS_FILE] == f"{contract.GIT_SECRET_DIR}/ssh_known_hosts"
    assert env_of(by_name(pod)["agent"])[contract.ENV_ANTHROPIC_KEY]["secretKeyRef"]["key"] == "ANTHROPIC_API_KEY"
    # the whole Secret is still mounted in the git containers only
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["git"]


BAD_SETTINGS = [
    ({"agent_uid": 0}, "build.agent_uid: must be a non-root uid.*refuses"),
    ({"git_uid": 0}, "build.git_uid: must be a non-root uid"),
    ({"agent_uid": -5}, "build.agent_uid"),
    ({"agent_uid": 2**31}, "build.agent_uid"),
    ({"agent_uid": 10002}, "build.agent_uid and build.git_uid are both 10002"),
    ({"container_security_context": {"runAsUser": 5}}, "set build.agent_uid and build.git_uid"),
    ({"container_security_context": {"runAsNonRoot": False}}, "runAsNonRoot: the build pod runs non-root"),
    ({"pod_security_context": {"runAsNonRoot": False}}, "pod_security_context.runAsNonRoot"),
    ({"git_token_key": "../etc/passwd"}, "build.git_token_key: '../etc/passwd' is not a Secret key"),
    ({"anthropic_secret_key": ""}, "build.anthropic_secret_key"),
    ({"git_known_hosts_key": ".."}, "build.git_known_hosts_key"),
    ({"git_ssh_private_key_key": "token"}, "must differ"),
    ({"pod_patch": ["not", "a", "map"]}, "build.pod_patch: expected a mapping"),
    ({"pod_json_patch": {"op": "add"}}, "build.pod_json_patch: expected a list"),
    ({"agent_uid": "10001"}, "build.agent_uid: expected a whole number"),
]


@pytest.mark.parametrize(("build", "message"), BAD_SETTINGS)
def test_bad_build_pod_settings_are_refused_on_load(tmp_path: Path, build: dict[str, Any], message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"build": build}))
    with pytest.raises(SettingsError, match=message):
        Settings.load(path, environ={})


def test_env_vars_reach_the_new_settings() -> None:
    settings = Settings.load(environ={
        "HUSKIES_BUILD_AGENT_UID": "2001", "HUSKIES_BUILD_GIT_UID": "2002",
        "HUSKIES_BUILD_POD_PATCH": "{runtimeClassName: gvisor}",
        "HUSKIES_BUILD_ANTHROPIC_SECRET_KEY": "1.10",
    })
    assert (settings.build.agent_uid, settings.build.git_uid) == (2001, 2002)
    assert settings.build.pod_patch == {"runtimeClassName": "gvisor"}
    assert settings.build.anthropic_secret_key == "1.10"  # a string setting stays a string


# ------------------------------------------------------------------------------------------ patches that work

SIDECAR = {"name": "postgres", "image": "postgres:16", "restartPolicy": "Always",
           "env": [{"name": "POSTGRES_PASSWORD", "value": "test"}],
           "securityContext": {"runAsUser": 999, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"]}}}

GOOD_PATCHES: list[tuple[str, dict[str, Any], Any]] = [
    ("env and envFrom from a ConfigMap", {"pod_patch": {"containers": [{
        "name": "agent", "env": [{"name": "GOFLAGS", "value": "-mod=mod"}],
        "envFrom": [{"configMapRef": {"name": "toolchain"}}]}]}},
     lambda p: by_name(p)["agent"]["envFrom"] == [{"configMapRef": {"name": "toolchain"}}]
     and env_of(by_name(p)["agent"])["GOFLAGS"] == "-mod=mod"),
    ("a native sidecar", {"pod_patch": {"initContainers": [SIDECAR]}},
     lambda p: [c["name"] for c in p["initContainers"]] == ["clone", "postgres"]),
    ("an init container before clone", {"pod_json_patch": [
        {"op": "add", "path": "/initContainers/0", "value": {"name": "warm", "image": "busybox"}}]},
     lambda p: [c["name"] for c in p["initContainers"]] == ["warm", "clone"]),
    ("volumes and mounts", {"pod_patch": {
        "volumes": [{"name": "gocache", "persistentVolumeClaim": {"claimName": "gocache"}}],
        "containers": [{"name": "agent", "volumeMounts": [{"name": "gocache", "mountPath": "/cache/go"}]}]}},
     lambda p: {"name": "gocache", "mountPath": "/cache/go"} in by_name(p)["agent"]["volumeMounts"]),
    ("runtimeClassName, dnsConfig, scheduling", {"pod_patch": {
        "runtimeClassName": "gvisor", "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]},
        "nodeSelector": {"pool": "build"}, "tolerations": [{"key": "build", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "builds"}},
     lambda p: p["runtimeClassName"] == "gvisor" and p["priorityClassName"] == "builds"
     and p["dnsConfig"]["options"][0]["name"] == "ndots"),
    ("another agent uid", {"pod_patch": {"containers": [
        {"name": "agent", "securityContext": {"runAsUser": 20001, "runAsGroup": 20001}}]}},
     lambda p: by_name(p)["agent"]["securityContext"]["runAsUser"] == 20001),
    ("the agent's image (a toolchain image)", {"pod_patch": {"containers": [
        {"name": "agent", "image": "registry.example/runner-go:1.23"}]}},
     lambda p: by_name(p)["agent"]["image"] == "registry.example/runner-go:1.23"),
    ("the Anthropic key from another Secret into the agent", {"pod_patch": {"containers": [
        {"name": "agent", "env": [{"name": contract.ENV_ANTHROPIC_KEY,
                                   "valueFrom": {"secretKeyRef": {"name": "vault-anthropic", "key": "k"}}}]}]}},
     lambda p: env_of(by_name(p)["agent"])[contract.ENV_ANTHROPIC_KEY]["secretKeyRef"]["name"] == "vault-anthropic"),
]


@pytest.mark.parametrize(("what", "build", "check"), GOOD_PATCHES, ids=[g[0] for g in GOOD_PATCHES])
def test_patches_a_user_needs_are_accepted_and_applied(what: str, build: dict[str, Any], check: Any) -> None:
    build = {k: tuple(v) if k == "pod_json_patch" else v for k, v in build.items()}
    assert objects.build_pod_problems(settings_of(**build)) == []
    assert check(pod_of(**build))


def test_the_patch_is_applied_to_every_job() -> None:
    settings = settings_of(pod_patch={"runtimeClassName": "gvisor"})
    for run in (RUN, objects.RunSpec("7_other", "3_qa", "node-2", 1)):
        assert objects.build_job(settings, run, "uid")["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"


# ------------------------------------------------------------------------------------------ patches refused

def agent_patch(**fields: Any) -> dict[str, Any]:
    return {"pod_patch": {"containers": [{"name": "agent", **fields}]}}


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # shape
    ("a misspelled container", {"pod_patch": {"containers": [{"name": "agnet", "env": []}]}},
     r"'agnet' is not one of the build pod's containers \(clone, agent, publish\) and has no image: a typo"),
    ("an unknown pod field", {"pod_patch": {"runtimeclassName": "gvisor"}},
     r"spec.runtimeclassName: unknown field \(did you mean runtimeClassName\?\)"),
    ("an unknown container field", agent_patch(envfrom=[]), r"spec.containers\[agent\].envfrom: unknown field"),
    ("a wrong type", {"pod_patch": {"runtimeClassName": 5}}, "spec.runtimeClassName: expected a string, got 5"),
    ("a list where a map goes", {"pod_patch": {"nodeSelector": ["pool"]}}, "spec.nodeSelector: expected a mapping"),
    ("containers as a map", {"pod_patch": {"containers": {"name": "agent"}}}, "spec.containers: expected a list"),
    ("a mount of a missing volume", agent_patch(volumeMounts=[{"name": "cahce", "mountPath": "/cache"}]),
     "volume 'cahce' is not in spec.volumes"),
    ("a patch that cannot apply", {"pod_json_patch": [{"op": "remove", "path": "/initContainers/4"}]},
     r"build.pod_patch / build.pod_json_patch: pod_json_patch\[0\] \(remove /initContainers/4\): index 4"),
    # the runner's contract
    ("the agent removed", {"pod_patch": {"containers": [{"name": "agent", "$patch": "delete"}]}},
     r"container 'agent': must stay in spec.containers"),
    ("clone moved out of the init containers", {"pod_json_patch": [
        {"op": "move", "from": "/initContainers/0", "path": "/containers/-"}]}, "container 'clone': must stay"),
    ("the agent's command changed", agent_patch(command=["sh", "-c", "claude"]),
     "command is the runner's contract"),
    ("publish's termination message path changed", {"pod_patch": {"containers": [
        {"name": "publish", "terminationMessagePath": "/tmp/x"}]}}, "terminationMessagePath is the runner's"),
    ("an extra long-running container", {"pod_patch": {"containers": [{"name": "db", "image": "postgres"}]}},
     "an extra container would hold the run open; add a sidecar to spec.initContainers with restartPolicy"),
    ("restartPolicy changed", {"pod_patch": {"restartPolicy": "OnFailure"}}, "spec.restartPolicy: must stay Never"),
    ("clone and publish as different uids", {"pod_patch": {"containers": [
        {"name": "publish", "securityContext": {"runAsUser": 10003}}]}}, "must run as the same"),
    # isolation
    ("the agent as the git uid", agent_patch(securityContext={"runAsUser": 10002}),
     "container 'agent' runs as uid 10002, the git uid too"),
    ("the agent as root", agent_patch(securityContext={"runAsUser": 0}), "container 'agent': must not run as uid 0"),
    ("the agent without a uid", agent_patch(securityContext={"runAsUser": None}), "runAsUser must be set"),
    ("the git Secret volume in the agent", agent_patch(volumeMounts=[
        {"name": buildpod.GIT_SECRET_VOLUME, "mountPath": "/creds"}]),
     "container 'agent' \\(containers\\): mounts 'git-credentials'.*never see the git credentials"),
    ("the git Secret as another volume in the agent", {"pod_patch": {
        "volumes": [{"name": "mine", "projected": {"sources": [{"secret": {"name": "git"}}]}}],
        "containers": [{"name": "agent", "volumeMounts": [{"name": "mine", "mountPath": "/m"}]}]}},
     "mounts 'mine', which holds the git credentials"),
    ("the publisher's private state in the agent", agent_patch(volumeMounts=[
        {"name": buildpod.STATE_VOLUME, "mountPath": "/state"}]), "mounts 'publisher-state'"),
    ("the git Secret in a sidecar", {"pod_patch": {"initContainers": [{
        **SIDECAR, "volumeMounts": [{"name": buildpod.GIT_SECRET_VOLUME, "mountPath": "/g"}]}]}},
     "container 'postgres' \\(initContainers\\): mounts 'git-credentials'"),
    ("the git token in the agent's env", agent_patch(env=[
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "git", "key": "token"}}}]),
     "env T reads the git Secret 'git'"),
    ("the git Secret as envFrom", agent_patch(envFrom=[{"secretRef": {"name": "git"}}]),
     "envFrom reads the git Secret 'git'"),
    ("a git credential env name in the agent", agent_patch(env=[
        {"name": contract.ENV_GIT_TOKEN, "value": "ghp_x"}]), f"env {contract.ENV_GIT_TOKEN} carries git credentials"),
    ("a privileged sidecar", {"pod_patch": {"initContainers": [{**SIDECAR, "securityContext": {"privileged": True}}]}},
     "container 'postgres': privileged containers can read every volume"),
    ("capabilities added to the agent", agent_patch(securityContext={"capabilities": {"add": ["SYS_PTRACE"]}}),
     "adding capabilities is refused"),
    ("privilege escalation", agent_patch(securityContext={"allowPrivilegeEscalation": True}),
     "allowPrivilegeEscalation must stay false"),
    ("runAsNonRoot off", agent_patch(securityContext={"runAsNonRoot": False}), "runAsNonRoot must stay true"),
    ("a hostPath in the agent", {"pod_patch": {
        "volumes": [{"name": "host", "hostPath": {"path": "/var/lib/kubelet"}}],
        "containers": [{"name": "agent", "volumeMounts": [{"name": "host", "mountPath": "/host"}]}]}},
     "mounts the hostPath volume 'host'"),
    ("a projected service account token in the agent", {"pod_patch": {
        "volumes": [{"name": "kube", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
        "containers": [{"name": "agent", "volumeMounts": [{"name": "kube", "mountPath": "/var/run/kube"}]}]}},
     "mounts 'kube', a service account token"),
    ("a shared process namespace", {"pod_patch": {"shareProcessNamespace": True}},
     "spec.shareProcessNamespace: must stay false"),
    ("the host's PID namespace", {"pod_patch": {"hostPID": True}}, "spec.hostPID: must stay false"),
    ("a service account token", {"pod_patch": {"automountServiceAccountToken": True}},
     "spec.automountServiceAccountToken: must stay false"),
]


@pytest.mark.parametrize(("what", "build", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_patches_that_break_the_pod_are_refused_saying_why(what: str, build: dict[str, Any], message: str) -> None:
    build = {k: tuple(v) if k == "pod_json_patch" else v for k, v in build.items()}
    problems = objects.build_pod_problems(settings_of(**build))
    assert problems, f"{what}: accepted"
    assert any(re.search(message, p) for p in problems), problems


def test_without_a_git_secret_the_private_volumes_are_still_private() -> None:
    settings = settings_of(git_secret="", **agent_patch(volumeMounts=[
        {"name": buildpod.STATE_VOLUME, "mountPath": "/state"}]))
    assert any("publisher-state" in p for p in objects.build_pod_problems(settings))


def test_the_operator_refuses_to_start_with_a_bad_patch_and_lists_every_problem() -> None:
    settings = settings_of(pod_patch={"shareProcessNamespace": True, "hostIPC": True})
    with pytest.raises(SettingsError) as exc:
        operator_cmd.check_build_pod(settings)
    text = str(exc.value)
    assert text.startswith("the build pod is not usable:")
    assert "spec.shareProcessNamespace" in text and "spec.hostIPC" in text
    operator_cmd.check_build_pod(settings_of(pod_patch={"runtimeClassName": "gvisor"}))  # a good one passes


def test_the_operator_command_exits_with_the_problems_not_a_traceback() -> None:
    """``huskies-agent operator`` with a patch that mounts the git Secret in the agent: exit 2, said why."""
    import json
    import subprocess
    import sys

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUSKIES_RENDEZVOUS_URL": "ws://127.0.0.1:9/crdt-sync",
           "HUSKIES_BUILD_GIT_SECRET": "git", "HUSKIES_BUILD_POD_PATCH": json.dumps({"containers": [
               {"name": "agent", "volumeMounts": [{"name": buildpod.GIT_SECRET_VOLUME, "mountPath": "/x"}]}]})}
    done = subprocess.run([sys.executable, "-m", "huskies_agent", "operator"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "the build pod is not usable" in done.stderr and "mounts 'git-credentials'" in done.stderr
