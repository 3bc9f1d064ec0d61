"""StoryJob ``status.conditions``: what tools that know nothing of huskies read
(``kubectl wait --for=condition=Succeeded``, Argo CD and Flux health checks).

Pure functions: :func:`implied` says which conditions a status write implies,
:func:`pod_scheduled` reads one from a pod, and :func:`merge` folds new conditions
into the list already written, keeping ``lastTransitionTime`` while a condition's
status stays the same. ``lifecycle`` holds each run's list and writes it with every
status patch (a merge patch replaces a list whole).

=============  ==========================================================================
Claimed        True once the claim is confirmed and the StoryJob made; False when the
               claim went to someone else (phase Lost).
PodScheduled   The run's pod was placed on a node (False: Unschedulable, with the
               scheduler's message).
ScaleUp        What a node autoscaler says about the unschedulable pod (``engine.scaleup``):
               True while it adds a node for it (reason TriggeredScaleUp or Nominated),
               False when it cannot (NotTriggerScaleUp, FailedScaleUp, FailedScheduling).
Succeeded      Unknown while Pending or Running; at the end True (phase Succeeded) or
               False with the final phase as reason (Failed, Released, Lost, Cancelled).
Recorded       The outcome's pipeline document write is confirmed (False: still waiting
               for the rendezvous).
=============  ==========================================================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from huskies_agent.engine.phases import Phase


class ConditionType(enum.StrEnum):
    CLAIMED = "Claimed"
    POD_SCHEDULED = "PodScheduled"
    SCALE_UP = "ScaleUp"
    SUCCEEDED = "Succeeded"
    RECORDED = "Recorded"


class Status(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


#: The order conditions are listed in (any other type keeps its place after these).
ORDER: tuple[ConditionType, ...] = tuple(ConditionType)
#: What the CRD (and metav1.Condition) accept as a reason.
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MESSAGE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType
    status: Status
    reason: str
    message: str = ""


def reason_token(text: str, fallback: str) -> str:
    """``text`` as a condition reason (CamelCase, no spaces), or ``fallback`` when nothing is left."""
    if _REASON.match(text):
        return text
    words = re.findall(r"[A-Za-z0-9]+", text)
    token = "".join(w[:1].upper() + w[1:] for w in words)
    token = token.lstrip("0123456789")[:64]
    return token if token and _REASON.match(token) else fallback


def implied(status: Mapping[str, Any]) -> list[Condition]:
    """The conditions a status write says something about (the fields it sets, not the whole status)."""
    out: list[Condition] = []
    phase = Phase.parse(status.get("phase"))
    reason_text = str(status.get("reason") or "")
    if phase is Phase.PENDING:
        job = status.get("jobName")
        out.append(Condition(ConditionType.CLAIMED, Status.TRUE, "ClaimConfirmed",
                             f"claim confirmed; job {job} created" if job else "claim confirmed"))
    if phase in (Phase.PENDING, Phase.RUNNING):
        out.append(Condition(ConditionType.SUCCEEDED, Status.UNKNOWN, phase.value,
                             "the run's pod has not started" if phase is Phase.PENDING else "the run is in progress"))
    elif phase is not None:
        ok = phase is Phase.SUCCEEDED
        out.append(Condition(ConditionType.SUCCEEDED, Status.TRUE if ok else Status.FALSE, phase.value,
                             reason_text or phase.value))
        if phase is Phase.LOST:
            out.append(Condition(ConditionType.CLAIMED, Status.FALSE, "ClaimLost", reason_text or "claim lost"))
    recorded = status.get("recorded")
    if isinstance(recorded, bool):
        action = str(status.get("action") or "")
        if not recorded:
            out.append(Condition(ConditionType.RECORDED, Status.FALSE, "AwaitingRendezvous",
                                 f"the outcome's document write ({action or 'unknown'}) is not confirmed yet"))
        elif action == "none" and phase is not None:
            out.append(Condition(ConditionType.RECORDED, Status.TRUE, "NothingToWrite",
                                 "the claim was no longer this node's: nothing written"))
        else:
            out.append(Condition(ConditionType.RECORDED, Status.TRUE, "DocumentWritten",
                                 reason_text or "the rendezvous confirmed the outcome's document write"))
    return out


def pod_scheduled(pod: Mapping[str, Any]) -> Condition | None:
    """The run's PodScheduled condition as its pod reports it (``None``: the pod says nothing yet)."""
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") != "PodScheduled":
            continue
        if cond.get("status") == "True":
            return Condition(ConditionType.POD_SCHEDULED, Status.TRUE, "Scheduled",
                             f"pod {(pod.get('metadata') or {}).get('name', '')} on node {node}".strip())
        reason = reason_token(str(cond.get("reason") or ""), "Unschedulable")
        message = str(cond.get("message") or cond.get("reason") or reason)
        return Condition(ConditionType.POD_SCHEDULED, Status.FALSE, reason, message)
    if node:
        return Condition(ConditionType.POD_SCHEDULED, Status.TRUE, "Scheduled", f"on node {node}")
    return None


def merge(existing: Sequence[Mapping[str, Any]], updates: Iterable[Condition], *, now: str,
          generation: int | None) -> list[dict[str, Any]]:
    """``existing`` with ``updates`` applied, one entry per type, in :data:`ORDER`.

    A condition whose status does not change keeps its ``lastTransitionTime``; its reason
    and message are refreshed. Malformed entries of ``existing`` are dropped.
    """
    by_type: dict[str, dict[str, Any]] = {}
    for written in existing:
        kind = written.get("type") if isinstance(written, Mapping) else None
        if isinstance(kind, str) and kind:
            by_type[kind] = dict(written)
    for cond in updates:
        old = by_type.get(cond.type.value)
        since = old.get("lastTransitionTime") if old and old.get("status") == cond.status.value else None
        entry: dict[str, Any] = {
            "type": cond.type.value, "status": cond.status.value,
            "reason": reason_token(cond.reason, cond.type.value), "message": cond.message[:MESSAGE_LIMIT],
            "lastTransitionTime": since or now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[cond.type.value] = entry
    rank = {t.value: i for i, t in enumerate(ORDER)}
    return sorted(by_type.values(), key=lambda c: rank.get(str(c["type"]), len(ORDER)))


def find(conditions: Sequence[Mapping[str, Any]], kind: ConditionType) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind.value), None)


def generation_of(obj: Mapping[str, Any] | None) -> int | None:
    value = ((obj or {}).get("metadata") or {}).get("generation")
    return value if isinstance(value, int) and value >= 0 else None
