"""Pure builders of the StoryJob and Job objects, and readers of their status.

Nothing here talks to the API server: inputs in, plain dicts out, so every spec is
unit-tested without a cluster (the habit dask-kubernetes' operator follows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from huskies_agent import contract
from huskies_agent.k8s import buildpod, naming, podcheck, podpatch
from huskies_agent.pipeline.model import branch_for
from huskies_agent.settings import BuildPodSettings, Settings

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
    """The runner's command-line contract (see docs/runner.md), after the phase.

    Options are passed as ``--flag=value`` so no value can ever be read as a flag.
    """
    values = {
        "story_id": run.story_id, "stage": run.stage, "repo_url": settings.build.repo_url,
        "base_branch": settings.build.base_branch, "epoch": str(run.epoch), "node": run.node,
    }
    return [f"{flag}={values[dest]}" for flag, dest, _env in contract.OPTIONS]


def agent_resources(build: BuildPodSettings) -> dict[str, Any]:
    """The agent container's requests and limits (the git containers get ``buildpod.GIT_RESOURCES``)."""
    resources: dict[str, Any] = {}
    if build.requests:
        resources["requests"] = {k: str(v) for k, v in build.requests.items()}
    if build.limits:
        resources["limits"] = {k: str(v) for k, v in build.limits.items()}
    return resources


def scheduling(build: BuildPodSettings) -> dict[str, Any]:
    """Where a build pod may run: its nodeSelector, tolerations and affinity (pod spec keys).

    Warm placeholders (``k8s/warmpod.py``) use the same, so a build pod fits where one stood.
    """
    spec: dict[str, Any] = {}
    if build.node_selector:
        spec["nodeSelector"] = dict(build.node_selector)
    if build.tolerations:
        spec["tolerations"] = [dict(t) for t in build.tolerations]
    if build.affinity:
        spec["affinity"] = dict(build.affinity)
    return spec


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

    init_containers, containers = buildpod.containers(
        build, runner_args(settings, run), agent_resources(build), build.checkpoint_interval_seconds)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": init_containers,
        "containers": containers,
        "volumes": buildpod.volumes(build),
        "automountServiceAccountToken": False,
        "shareProcessNamespace": False,
        "securityContext": buildpod.pod_security(build),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": contract.TERMINATION_GRACE_SECONDS,
    }
    if build.service_account:
        pod_spec["serviceAccountName"] = build.service_account
    if build.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in build.image_pull_secrets]
    pod_spec.update(scheduling(build))
    if build.priority_class_name:
        pod_spec["priorityClassName"] = build.priority_class_name
    pod_spec = patched_pod_spec(settings, pod_spec)

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


def patched_pod_spec(settings: Settings, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """``build.pod_patch`` then ``build.pod_json_patch`` over the generated spec (PatchError if they fail)."""
    build = settings.build
    if build.pod_patch:
        pod_spec = podpatch.strategic_merge(pod_spec, build.pod_patch)
    if build.pod_json_patch:
        pod_spec = podpatch.json_patch(pod_spec, build.pod_json_patch)
    return pod_spec


#: The run the start-up check builds its sample pod for.
SAMPLE_RUN = RunSpec("0_sample", "2_current", "sample-node", 1)


def build_pod_problems(settings: Settings) -> list[str]:
    """What is wrong with the build pod these settings make, patches applied ([] when nothing).

    Checked once at start (``operator`` command), so a bad patch stops the install with a
    message instead of failing every story's Job.
    """
    unpatched = replace(settings, build=replace(settings.build, pod_patch={}, pod_json_patch=()))
    generated = build_job(unpatched, SAMPLE_RUN, None)["spec"]["template"]["spec"]
    try:
        spec = build_job(settings, SAMPLE_RUN, None)["spec"]["template"]["spec"]
    except podpatch.PatchError as exc:
        return [f"build.pod_patch / build.pod_json_patch: {exc}"]
    return podcheck.problems(generated, spec, settings.build.git_secret)


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
    """Exit code and termination message of the run's result, if the run ended.

    The publisher's container holds it; when the run ended in the clone init container
    (bad input, remote down, fenced at the start) that one does. The agent's container is
    never read: the agent writes what it likes there.
    """
    status = pod.get("status") or {}
    for key, name in (("containerStatuses", contract.RESULT_CONTAINER),
                      ("initContainerStatuses", contract.RESULT_INIT_CONTAINER)):
        for cs in status.get(key) or []:
            if cs.get("name") != name:
                continue
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated and (key == "containerStatuses" or terminated.get("exitCode")):
                return terminated.get("exitCode"), str(terminated.get("message") or "")
    return None, ""


def parse_result(message: str) -> dict[str, Any]:
    """The runner's one-line JSON result; ``{}`` when the message is not one."""
    return contract.parse_result(message)


def pod_was_disrupted(pod: Mapping[str, Any]) -> str | None:
    """Why a pod was taken away by the cluster (eviction, drain, preemption), if it was."""
    status = pod.get("status") or {}
    if status.get("reason") in ("Evicted", "Preempting", "NodeLost", "Terminated", "Shutdown"):
        return str(status.get("reason"))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return str(cond.get("reason") or "DisruptionTarget")
    return None
