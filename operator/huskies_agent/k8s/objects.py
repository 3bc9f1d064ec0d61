"""Pure builders of the StoryJob and Job objects, and readers of their status.

Nothing here talks to the API server: inputs in, plain dicts out, so every spec is
unit-tested without a cluster (the habit dask-kubernetes' operator follows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huskies_agent.k8s import naming
from huskies_agent.pipeline.model import branch_for
from huskies_agent.settings import BuildPodSettings, Settings

RUNNER_CONTAINER = "runner"
WORKDIR = "/work"
GIT_SSH_DIR = "/var/run/secrets/huskies/git"
TERMINATION_LOG = "/dev/termination-log"
API_VERSION = f"{naming.GROUP}/{naming.VERSION}"


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything that identifies one run of one story."""

    story_id: str
    stage: str
    node: str
    epoch: int

    @property
    def name(self) -> str:
        return naming.storyjob_name(self.story_id, self.stage, self.node, self.epoch)


def common_labels(settings: Settings, run: RunSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": naming.APP_NAME,
        "app.kubernetes.io/instance": settings.instance,
        "app.kubernetes.io/component": naming.COMPONENT_BUILD,
        "app.kubernetes.io/managed-by": naming.APP_NAME,
        naming.LABEL_STORY: naming.label_value(run.story_id),
        naming.LABEL_STAGE: run.stage,
        naming.LABEL_NODE: naming.label_value(run.node),
        naming.LABEL_CLUSTER: naming.label_value(settings.cluster_name),
        naming.LABEL_EPOCH: str(run.epoch),
    }


def run_annotations(run: RunSpec) -> dict[str, str]:
    """Exact story id, node id and epoch (labels hold only label-safe forms of them)."""
    return {naming.ANNOTATION_STORY_ID: run.story_id, naming.ANNOTATION_NODE: run.node,
            naming.ANNOTATION_EPOCH: str(run.epoch)}


def selector_for_instance(settings: Settings) -> str:
    return f"app.kubernetes.io/managed-by={naming.APP_NAME},app.kubernetes.io/instance={settings.instance}"


def selector_for_node(settings: Settings, node: str) -> str:
    """The objects of this install's node only (another install may share the namespace)."""
    return f"{selector_for_instance(settings)},{naming.LABEL_NODE}={naming.label_value(node)}"


def build_storyjob(settings: Settings, run: RunSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": naming.KIND,
        "metadata": {
            "name": run.name,
            "namespace": settings.namespace,
            "labels": common_labels(settings, run),
            "annotations": run_annotations(run),
        },
        "spec": {
            "storyId": run.story_id,
            "stage": run.stage,
            "node": run.node,
            "epoch": run.epoch,
            "branch": branch_for(run.story_id),
            "repoUrl": settings.build.repo_url,
            "baseBranch": settings.build.base_branch,
        },
    }


def runner_args(settings: Settings, run: RunSpec) -> list[str]:
    """The runner's command-line contract (see docs/runner.md).

    Options are passed as ``--flag=value`` so no value can ever be read as a flag.
    """
    return [
        f"--story-id={run.story_id}",
        f"--stage={run.stage}",
        f"--repo-url={settings.build.repo_url}",
        f"--base-branch={settings.build.base_branch}",
        f"--epoch={run.epoch}",
        f"--node={run.node}",
    ]


def _runner_env(build: BuildPodSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"{WORKDIR}/home"},
        {"name": "HUSKIES_WORKDIR", "value": WORKDIR},
        {"name": "HUSKIES_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "HUSKIES_MAX_TURNS", "value": str(build.max_turns)},
        {"name": "HUSKIES_AGENT_TIMEOUT_SECONDS", "value": str(build.agent_timeout_seconds)},
    ]
    if build.model:
        env.append({"name": "HUSKIES_MODEL", "value": build.model})
    if build.max_budget_usd:
        env.append({"name": "HUSKIES_MAX_BUDGET_USD", "value": str(build.max_budget_usd)})
    if build.git_secret:
        env.append({
            "name": "HUSKIES_GIT_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": build.git_secret, "key": "token", "optional": True}},
        })
        env.append({"name": "HUSKIES_GIT_SSH_KEY_FILE", "value": f"{GIT_SSH_DIR}/ssh-privatekey"})
    if build.anthropic_secret:
        env.append({
            "name": "ANTHROPIC_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": build.anthropic_secret, "key": "api-key"}},
        })
    env.extend(dict(e) for e in build.extra_env)
    return env


def build_job(settings: Settings, run: RunSpec, owner_uid: str | None) -> dict[str, Any]:
    """The batch/v1 Job that runs one story, owned by its StoryJob."""
    build = settings.build
    labels = common_labels(settings, run)
    pod_labels = {**dict(build.pod_labels), **labels}
    pod_annotations: dict[str, str] = dict(build.pod_annotations)
    pod_annotations.update(run_annotations(run))
    if build.protect_from_consolidation:
        pod_annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] = "false"
        pod_annotations["karpenter.sh/do-not-disrupt"] = "true"

    volumes: list[dict[str, Any]] = [
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if build.git_secret:
        volumes.append({
            "name": "git-credentials",
            "secret": {"secretName": build.git_secret, "optional": True, "defaultMode": 0o400},
        })
        mounts.append({"name": "git-credentials", "mountPath": GIT_SSH_DIR, "readOnly": True})
    volumes.extend(dict(v) for v in build.extra_volumes)
    mounts.extend(dict(m) for m in build.extra_volume_mounts)

    resources: dict[str, Any] = {}
    if build.requests:
        resources["requests"] = {k: str(v) for k, v in build.requests.items()}
    if build.limits:
        resources["limits"] = {k: str(v) for k, v in build.limits.items()}

    container: dict[str, Any] = {
        "name": RUNNER_CONTAINER,
        "image": build.image,
        "imagePullPolicy": build.image_pull_policy,
        "command": ["huskies-agent", "run-story"],
        "args": runner_args(settings, run),
        "env": _runner_env(build),
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "workingDir": WORKDIR,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": 10001},
        "enableServiceLinks": False,
    }
    if build.service_account:
        pod_spec["serviceAccountName"] = build.service_account
    if build.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in build.image_pull_secrets]
    if build.node_selector:
        pod_spec["nodeSelector"] = dict(build.node_selector)
    if build.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in build.tolerations]
    if build.affinity:
        pod_spec["affinity"] = dict(build.affinity)
    if build.priority_class_name:
        pod_spec["priorityClassName"] = build.priority_class_name

    metadata: dict[str, Any] = {
        "name": run.name,
        "namespace": settings.namespace,
        "labels": labels,
        "annotations": run_annotations(run),
    }
    if owner_uid:
        metadata["ownerReferences"] = [{
            "apiVersion": API_VERSION,
            "kind": naming.KIND,
            "name": run.name,
            "uid": owner_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # Retries are the pipeline's business (retry_count), not the Job controller's.
            "backoffLimit": 0,
            "activeDeadlineSeconds": build.active_deadline_seconds,
            # No ttlSecondsAfterFinished: a finished Job must outlive any operator downtime
            # (else adoption cannot tell it ran); it goes with its StoryJob, through the owner
            # reference, once the StoryJob's recorded outcome is cleaned up.
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


# ---------------------------------------------------------------------- reading status

def run_spec_from_object(obj: Mapping[str, Any]) -> RunSpec | None:
    """The RunSpec recorded on a StoryJob (spec) or Job (labels/annotations)."""
    spec = obj.get("spec") or {}
    if "storyId" in spec:
        try:
            return RunSpec(str(spec["storyId"]), str(spec["stage"]), str(spec["node"]), int(spec["epoch"]))
        except (KeyError, TypeError, ValueError):
            return None
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    try:
        return RunSpec(
            ann[naming.ANNOTATION_STORY_ID],
            labels[naming.LABEL_STAGE],
            ann.get(naming.ANNOTATION_NODE) or labels.get(naming.LABEL_NODE, ""),
            int(ann[naming.ANNOTATION_EPOCH]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def job_condition(job: Mapping[str, Any]) -> str | None:
    """``"Complete"`` or ``"Failed"`` when the Job has finished, else ``None``."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def job_failure(job: Mapping[str, Any]) -> tuple[str, str]:
    """Reason (``DeadlineExceeded``, ``BackoffLimitExceeded``...) and message of a failed Job."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or "Failed"), str(cond.get("message") or "")
    return "Failed", ""


def pod_termination(pod: Mapping[str, Any]) -> tuple[int | None, str]:
    """Exit code and termination message of the runner container, if it terminated."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != RUNNER_CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated.get("exitCode"), str(terminated.get("message") or "")
    return None, ""


def parse_result(message: str) -> dict[str, Any]:
    """The runner's one-line JSON result; ``{}`` when the message is not one."""
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def pod_was_disrupted(pod: Mapping[str, Any]) -> str | None:
    """Why a pod was taken away by the cluster (eviction, drain, preemption), if it was."""
    status = pod.get("status") or {}
    if status.get("reason") in ("Evicted", "Preempting", "NodeLost", "Terminated", "Shutdown"):
        return str(status.get("reason"))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return str(cond.get("reason") or "DisruptionTarget")
    return None
