"""Chart values that change the build pod: uids, security contexts, Secret key names, patches."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CI_VALUES, Helm, rendered_config

from huskies_agent.commands.operator_cmd import check_build_pod
from huskies_agent.k8s import objects
from huskies_agent.settings import Settings, SettingsError

URL = "ws://huskies-rendezvous:3001/crdt-sync"
FULL = CI_VALUES / "full-values.yaml"


def settings_from(helm: Helm, tmp_path: Path, *, values: list[Path] | None = None,
                  sets: list[str] | None = None) -> Settings:
    config = rendered_config(helm.render(values=values or [], sets=[f"rendezvous.url={URL}", *(sets or [])]))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Settings.load(path, environ={"POD_NAME": "p", "POD_NAMESPACE": "builders"})


def pod_spec(settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = objects.build_job(settings, objects.SAMPLE_RUN, None)["spec"]["template"]["spec"]
    return spec


def test_full_values_give_a_patched_pod_the_operator_accepts(helm: Helm, tmp_path: Path) -> None:
    settings = settings_from(helm, tmp_path, values=[FULL])
    check_build_pod(settings)  # what the operator does at start
    spec = pod_spec(settings)
    assert spec["runtimeClassName"] == "gvisor"
    assert [c["name"] for c in spec["initContainers"]] == ["warm-cache", "clone", "postgres"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert agent["image"].startswith("registry.example.com/huskies/runner-go@sha256:")
    assert agent["envFrom"] == [{"configMapRef": {"name": "toolchain"}}]
    assert agent["securityContext"]["runAsUser"] == 1000650001
    assert agent["securityContext"]["seLinuxOptions"] == {"level": "s0:c26,c5"}
    publish = next(c for c in spec["containers"] if c["name"] == "publish")
    env = {e["name"]: e.get("value") for e in publish["env"]}
    assert env["HUSKIES_GIT_TOKEN_FILE"].endswith("/github-token")
    assert env["HUSKIES_GIT_KNOWN_HOSTS_FILE"].endswith("/ssh_known_hosts")
    assert {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "huskies-anthropic", "key": "ANTHROPIC_API_KEY"}}} in agent["env"]


def test_values_set_on_the_command_line(helm: Helm, tmp_path: Path) -> None:
    """The OpenShift and gVisor recipes of docs/install.md, as --set flags."""
    settings = settings_from(helm, tmp_path, sets=[
        "build.agentUid=1000650001", "build.gitUid=1000650002", "build.podPatch.runtimeClassName=gvisor",
        "build.containerSecurityContext.readOnlyRootFilesystem=false",
        "build.git.tokenKey=password", "build.anthropic.existingSecretKey=ANTHROPIC_API_KEY"])
    check_build_pod(settings)
    spec = pod_spec(settings)
    assert spec["runtimeClassName"] == "gvisor"
    assert {c["name"]: c["securityContext"]["runAsUser"] for c in spec["initContainers"] + spec["containers"]} \
        == {"clone": 1000650002, "agent": 1000650001, "publish": 1000650002}
    assert all(c["securityContext"]["readOnlyRootFilesystem"] is False for c in spec["containers"])


def test_default_values_render_todays_pod(helm: Helm, tmp_path: Path) -> None:
    config = rendered_config(helm.render(sets=[f"rendezvous.url={URL}"]))["build"]
    assert (config["agent_uid"], config["git_uid"]) == (10001, 10002)
    assert (config["git_token_key"], config["git_ssh_private_key_key"], config["git_known_hosts_key"],
            config["anthropic_secret_key"]) == ("token", "ssh-privatekey", "known_hosts", "api-key")
    assert config["pod_patch"] == {} and config["pod_json_patch"] == []
    assert config["container_security_context"] == {} and config["pod_security_context"] == {}


BAD = [
    (["build.agentUid=10002"], r"build.agentUid and build.gitUid are both 10002"),
    (["build.agentUid=0"], r"/build/agentUid|build.agentUid"),
    (["build.gitUid=-1"], r"/build/gitUid|build.gitUid"),
    (["build.containerSecurityContext.runAsUser=5"], r"/build/containerSecurityContext|containerSecurityContext"),
    (["build.containerSecurityContext.privileged=true"], r"containerSecurityContext"),
    (["build.podSecurityContext.runAsNonRoot=false"], r"podSecurityContext"),
    (["build.git.tokenKey=a/b"], r"/build/git/tokenKey|tokenKey"),
    (["build.anthropic.existingSecretKey=.."], r"existingSecretKey"),
    (["build.podJsonPatch[0].op=merge", "build.podJsonPatch[0].path=/a"], r"podJsonPatch"),
    (["build.podJsonPatch[0].op=add"], r"podJsonPatch"),
]


@pytest.mark.parametrize(("sets", "named"), BAD)
def test_bad_values_fail_template_naming_the_value(helm: Helm, sets: list[str], named: str) -> None:
    proc = helm.run(*helm.template_args(sets=[f"rendezvous.url={URL}", *sets]), check=False)
    assert proc.returncode != 0, f"helm template accepted {sets}"
    assert re.search(named, proc.stderr), proc.stderr


def test_a_patch_the_schema_cannot_judge_is_refused_by_the_operator(helm: Helm, tmp_path: Path) -> None:
    """helm renders any PodSpec patch; the operator refuses at start one that lets the agent at the git Secret."""
    patch = {"containers": [{"name": "agent", "envFrom": [{"secretRef": {"name": "huskies-git"}}]}]}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"build": {"git": {"existingSecret": "huskies-git"}, "podPatch": patch}}))
    settings = settings_from(helm, tmp_path, values=[values])
    assert settings.build.pod_patch == patch
    with pytest.raises(SettingsError, match="envFrom reads the git Secret 'huskies-git'"):
        check_build_pod(settings)

