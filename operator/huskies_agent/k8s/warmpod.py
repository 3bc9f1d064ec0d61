"""Warm build slots' placeholder pods: the pure builder, and readers of their state.

A placeholder holds one build pod's room on a node so the node stays up (an autoscaler sees
a pod there) and a story's pod starts at once: the build pod has a higher priority, so the
scheduler preempts a placeholder to make room. It therefore asks for exactly what a build
pod asks for and may run exactly where one may (same nodeSelector, tolerations, affinity):
two containers, one with the agent's resources and one with a git container's, which is
the build pod's effective request (its ``clone`` init container asks for less than the two
together). It runs ``build.warm_command`` (by default the runner image's ``sleep``) with no
volumes, no token, no capabilities and a read-only root filesystem, and ends at once when
deleted (grace period 0). Placeholders carry no autoscaler protection annotation, so
consolidation may move them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from huskies_agent.k8s import buildpod, naming, objects
from huskies_agent.settings import Settings

#: Containers of a placeholder: the agent's share and the git containers' share of a build pod.
SLOT_CONTAINER = "slot"
SLOT_GIT_CONTAINER = "slot-git"


class SlotState(enum.Enum):
    """What a placeholder does for the pool."""

    READY = "ready"  # bound to a node: a build pod may take its room now
    WAITING = "waiting"  # not placed yet (waiting for a node, or no room anywhere)
    UNSCHEDULABLE = "unschedulable"  # the scheduler found no node for it
    GOING = "going"  # being deleted (preempted, drained) or ended: no longer counts


def labels(settings: Settings, node: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": naming.APP_NAME,
        "app.kubernetes.io/instance": settings.instance,
        "app.kubernetes.io/component": naming.COMPONENT_WARM,
        "app.kubernetes.io/managed-by": naming.APP_NAME,
        naming.LABEL_NODE: naming.label_value(node),
        naming.LABEL_CLUSTER: naming.label_value(settings.cluster_name),
    }


def selector(settings: Settings, node: str) -> str:
    """This install's node's placeholders, and no other pod."""
    return (f"{objects.selector_for_node(settings, node)},"
            f"app.kubernetes.io/component={naming.COMPONENT_WARM}")


def is_placeholder(pod: Mapping[str, Any]) -> bool:
    pod_labels = (pod.get("metadata") or {}).get("labels") or {}
    return pod_labels.get("app.kubernetes.io/component") == naming.COMPONENT_WARM


def build_placeholder(settings: Settings, node: str) -> dict[str, Any]:
    """One placeholder pod (``generateName``: the pool counts them, it never names them)."""
    build = settings.build
    # The agent's uid and the build pod's security settings: a placeholder is admitted wherever a
    # build pod is (OpenShift's uid ranges, SELinux levels).
    security = buildpod.security_context(build.agent_uid, build.container_security_context)

    def container(name: str, resources: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "image": build.warm_image or build.image,
            "imagePullPolicy": build.image_pull_policy,
            "command": list(build.warm_command),
            "resources": dict(resources),
            "securityContext": security,
        }

    spec: dict[str, Any] = {
        "containers": [container(SLOT_CONTAINER, objects.agent_resources(build)),
                       container(SLOT_GIT_CONTAINER, buildpod.GIT_RESOURCES)],
        "restartPolicy": "Always",
        "priorityClassName": build.warm_priority_class_name,
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": buildpod.pod_security(build),
        **objects.scheduling(build),
    }
    if build.service_account:
        spec["serviceAccountName"] = build.service_account
    if build.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in build.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{naming.APP_NAME}-warm-{naming.node_hash(node)}-",
            "namespace": settings.namespace,
            "labels": labels(settings, node),
        },
        "spec": spec,
    }


def slot_state(pod: Mapping[str, Any]) -> SlotState:
    """What a placeholder pod is for the pool, from its metadata and status alone."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return SlotState.GOING
    if objects.pod_was_disrupted(pod):
        return SlotState.GOING
    if (pod.get("spec") or {}).get("nodeName"):
        # Bound: the room is held on a node that exists (the image may still be pulling, which
        # also pulls the runner image there when the placeholder uses it).
        return SlotState.READY
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            return SlotState.UNSCHEDULABLE
    return SlotState.WAITING
