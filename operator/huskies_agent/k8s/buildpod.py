"""The story pod's layout: who runs where, as which uid, seeing which volumes (pure).

Three containers from the runner image (``docs/runner.md``, "Isolation"):

* init container ``clone`` (git uid, ``build.git_uid``): mounts the git Secret, fetches the story's start
  into the publisher's private volume and a credential-free seed into the workspace;
* ``agent`` (agent uid, ``build.agent_uid``): Claude Code with the Anthropic key, the workspace and its own
  ``/tmp``; no git Secret, no git token, no access to the private volume;
* ``publish`` (git uid): the git Secret, the private volume and the workspace read-only;
  pushes fenced checkpoints while the agent works and the final commit after it.

No ``fsGroup`` (it would be a supplementary group of every container, the agent's too,
and make the Secret group-readable), no shared process namespace, no service account
token, read-only root filesystems, every capability dropped.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from huskies_agent import contract
from huskies_agent.settings import BuildPodSettings

WORK_VOLUME = "work"
STATE_VOLUME = "publisher-state"
GIT_SECRET_VOLUME = "git-credentials"
AGENT_TMP_VOLUME = "agent-tmp"
GIT_TMP_VOLUME = "git-tmp"
#: The git containers do little besides git; the agent gets the configured resources.
GIT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"}}


def security_context(uid: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A container's securityContext: the defaults, ``build.container_security_context`` over them."""
    out: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


def _value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _common_env() -> list[dict[str, Any]]:
    return [
        _value(contract.ENV_WORKDIR, contract.WORKDIR),
        _value(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG),
    ]


def git_env(build: BuildPodSettings, checkpoint_interval: float) -> list[dict[str, Any]]:
    """Env of ``clone`` and ``publish``: where the private state and the Secret's files are."""
    env = _common_env() + [
        _value("HOME", f"{contract.STATE_DIR}/home"),
        _value(contract.ENV_STATE_DIR, contract.STATE_DIR),
        _value(contract.ENV_CHECKPOINT_INTERVAL, f"{checkpoint_interval:g}"),
    ]
    if build.git_secret:
        # Files, not env values: the token is read by git's credential helper when git asks.
        # The Secret's keys are files named after them (build.git_*_key, for External Secrets or Vault).
        env.append(_value(contract.ENV_GIT_TOKEN_FILE, f"{contract.GIT_SECRET_DIR}/{build.git_token_key}"))
        env.append(_value(contract.ENV_GIT_SSH_KEY_FILE, f"{contract.GIT_SECRET_DIR}/{build.git_ssh_private_key_key}"))
        env.append(_value(contract.ENV_GIT_KNOWN_HOSTS_FILE, f"{contract.GIT_SECRET_DIR}/{build.git_known_hosts_key}"))
    return env


def agent_env(build: BuildPodSettings, checkpoint_interval: float) -> list[dict[str, Any]]:
    env = _common_env() + [
        _value("HOME", f"{contract.WORKDIR}/home"),
        _value(contract.ENV_CHECKPOINT_INTERVAL, f"{checkpoint_interval:g}"),
        _value(contract.ENV_MAX_TURNS, str(build.max_turns)),
        _value(contract.ENV_AGENT_TIMEOUT, str(build.agent_timeout_seconds)),
    ]
    if build.model:
        env.append(_value(contract.ENV_MODEL, build.model))
    if build.max_budget_usd:
        env.append(_value(contract.ENV_MAX_BUDGET_USD, str(build.max_budget_usd)))
    if build.anthropic_secret:
        env.append({
            "name": contract.ENV_ANTHROPIC_KEY,
            "valueFrom": {"secretKeyRef": {"name": build.anthropic_secret, "key": build.anthropic_secret_key}},
        })
    env.extend(dict(e) for e in build.extra_env)
    return env


def volumes(build: BuildPodSettings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": WORK_VOLUME, "emptyDir": {}},
        {"name": STATE_VOLUME, "emptyDir": {}},
        {"name": AGENT_TMP_VOLUME, "emptyDir": {}},
        {"name": GIT_TMP_VOLUME, "emptyDir": {}},
    ]
    if build.git_secret:
        # Mounted only in the git containers, where the git uid is the only uid. Kubernetes
        # cannot chown a Secret's files to a non-root uid without fsGroup (which the agent
        # would get too), so the files are 0444 inside those containers.
        out.append({"name": GIT_SECRET_VOLUME,
                    "secret": {"secretName": build.git_secret, "optional": True, "defaultMode": 0o444}})
    out.extend(dict(v) for v in build.extra_volumes)
    return out


def _git_mounts(build: BuildPodSettings, *, workspace_read_only: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": WORK_VOLUME, "mountPath": contract.WORKDIR, "readOnly": workspace_read_only},
        {"name": STATE_VOLUME, "mountPath": contract.STATE_DIR},
        {"name": GIT_TMP_VOLUME, "mountPath": "/tmp"},
    ]
    if build.git_secret:
        mounts.append({"name": GIT_SECRET_VOLUME, "mountPath": contract.GIT_SECRET_DIR, "readOnly": True})
    return mounts


def _container(name: str, build: BuildPodSettings, phase: contract.Phase, args: list[str], uid: int,
               env: list[dict[str, Any]], mounts: list[dict[str, Any]],
               resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "image": build.image,
        "imagePullPolicy": build.image_pull_policy,
        "command": list(contract.COMMAND),
        "args": [phase.value, *args],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "workingDir": contract.WORKDIR,
        "securityContext": security_context(uid, build.container_security_context),
    }


def containers(build: BuildPodSettings, args: list[str], agent_resources: dict[str, Any],
               checkpoint_interval: float | None = None,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(initContainers, containers)`` of the story pod."""
    if checkpoint_interval is None:
        checkpoint_interval = build.checkpoint_interval_seconds
    genv = git_env(build, checkpoint_interval)
    clone = _container(contract.CLONE_CONTAINER, build, contract.Phase.CLONE, args, build.git_uid, genv,
                       _git_mounts(build, workspace_read_only=False), GIT_RESOURCES)
    agent_mounts = [
        {"name": WORK_VOLUME, "mountPath": contract.WORKDIR},
        {"name": AGENT_TMP_VOLUME, "mountPath": "/tmp"},
        *(dict(m) for m in build.extra_volume_mounts),
    ]
    agent = _container(contract.AGENT_CONTAINER, build, contract.Phase.AGENT, args, build.agent_uid,
                       agent_env(build, checkpoint_interval), agent_mounts, agent_resources)
    publish = _container(contract.PUBLISH_CONTAINER, build, contract.Phase.PUBLISH, args, build.git_uid,
                         list(genv), _git_mounts(build, workspace_read_only=True), GIT_RESOURCES)
    return [clone], [agent, publish]


def pod_security(build: BuildPodSettings) -> dict[str, Any]:
    """The pod's securityContext: the defaults, ``build.pod_security_context`` over them."""
    out: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    out.update(copy.deepcopy(dict(build.pod_security_context)))
    return out
