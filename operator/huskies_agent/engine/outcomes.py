"""How a run ends: a pure table from what was observed to what the engine does.

An :class:`Observation` says what happened to a run (its Job finished, its pod is
stuck, its claim was lost, its Job vanished...). :func:`decide` turns it into an
:class:`Outcome`: the StoryJob phase and reason, the one write to the pipeline
document (:class:`DocAction`), the Event, a cooldown and whether the run counts as a
failure of the story. :func:`describe` words the Event once the document write is
known. Nothing here performs I/O; ``lifecycle.end_run`` applies the outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from huskies_agent.contract import Action, ExitCode, NodeHold, disposition
from huskies_agent.engine.phases import Phase, StuckKind

#: Job condition reason of a Job killed at ``activeDeadlineSeconds``.
DEADLINE_EXCEEDED = "DeadlineExceeded"


class DocAction(enum.StrEnum):
    """The one write an ending run makes to the pipeline document."""

    ADVANCE = "advance"  # move the story to the next stage and release the claim
    COUNT_FAILURE = "count_failure"  # count a retry (block at max_retries) and release
    RELEASE = "release"  # release the claim for anyone, nothing counted
    NONE = "none"  # the claim is not ours any more: write nothing


# ---------------------------------------------------------------------- observations

@dataclass(frozen=True, slots=True)
class Finished:
    """The Job reached a final condition."""

    succeeded: bool
    exit_code: int | None = None
    #: The runner's JSON result (termination message), ``{}`` when there is none.
    result: Mapping[str, Any] = field(default_factory=dict)
    #: Why the pod was taken away by the cluster, if it was.
    disrupted: str | None = None
    #: The Job's ``Failed`` condition reason (``DeadlineExceeded``, ``BackoffLimitExceeded``...).
    job_reason: str = ""
    job_message: str = ""


@dataclass(frozen=True, slots=True)
class Stuck:
    """The pod could not start for longer than the kind's timeout."""

    kind: StuckKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NoScaleUp:
    """The pod is unschedulable and the node autoscaler says it cannot add a node for it
    (``engine.scaleup``): another cluster may have room, so the story goes back at once."""

    detail: str


@dataclass(frozen=True, slots=True)
class ClaimLost:
    """The document says the run may not go on (``claims.check_ownership``)."""

    reason: str
    #: The story was removed or finished (done/archived): nothing is lost, it is over.
    story_over: bool = False
    #: The claim is still this node's at the run's epoch (e.g. the story was moved by hand).
    still_ours: bool = False


@dataclass(frozen=True, slots=True)
class JobGone:
    """Someone deleted the Job (or its StoryJob) while it ran."""


@dataclass(frozen=True, slots=True)
class Disrupted:
    """The running pod was evicted, drained or preempted."""

    why: str


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The StoryJob or Job could not be created."""

    why: str
    #: A 4xx answer (bad build setting, quota): retry elsewhere, not here soon.
    client_error: bool = False


Observation = Finished | Stuck | NoScaleUp | ClaimLost | JobGone | Disrupted | StartFailed


# ---------------------------------------------------------------------- outcome

@dataclass(frozen=True, slots=True)
class Timeouts:
    """Cooldowns (seconds) applied when this node gives a story back."""

    stuck_cooldown: float = 900.0
    gone_cooldown: float = 30.0
    start_retry_cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    phase: Phase
    reason: str
    action: DocAction
    #: Event reason posted on the StoryJob (``describe`` may refine it).
    event: str
    warning: bool = True
    #: Seconds during which this node does not claim the story again.
    cooldown: float = 0.0
    #: Whether the run counts against the story's retries.
    counted: bool = False
    #: Delete the Job now (it may still be running).
    delete_job: bool = False
    #: Extra StoryJob status fields (the runner's result).
    status: Mapping[str, Any] = field(default_factory=dict)
    #: Whether this node stops claiming for a while (the model API refused the key or
    #: is unavailable: every story would end the same way here).
    hold: NodeHold = NodeHold.NONE


def decide(obs: Observation, *, timeouts: Timeouts = Timeouts()) -> Outcome:
    """The outcome of a run given what was observed."""
    match obs:
        case Finished():
            return _finished(obs)
        case Stuck(kind=kind, detail=detail):
            what = "the job got no pod (missing ServiceAccount, quota?)" if kind is StuckKind.NO_POD \
                else f"cannot start ({detail})"
            return Outcome(Phase.FAILED, f"{what}; claim released", DocAction.RELEASE, "Failed",
                           cooldown=timeouts.stuck_cooldown, delete_job=True)
        case NoScaleUp(detail=detail):
            # Released, not Failed: nothing is wrong with the story or the install; this cluster
            # cannot grow to fit it. Not claimed here again for the pending timeout.
            return Outcome(Phase.RELEASED, f"no scale-up possible: {detail}; claim released for another cluster",
                           DocAction.RELEASE, "NoScaleUp", cooldown=timeouts.stuck_cooldown, delete_job=True)
        case ClaimLost(reason=reason, story_over=over, still_ours=ours):
            phase = Phase.CANCELLED if over else Phase.LOST
            return Outcome(phase, reason, DocAction.RELEASE if ours else DocAction.NONE,
                           "Cancelled" if over else "ClaimLost", delete_job=True)
        case JobGone():
            return Outcome(Phase.CANCELLED, "job deleted", DocAction.RELEASE, "Cancelled",
                           cooldown=timeouts.gone_cooldown)
        case Disrupted(why=why):
            return Outcome(Phase.RELEASED, f"pod disrupted ({why}); claim released for another node",
                           DocAction.RELEASE, "Disrupted", delete_job=True)
        case StartFailed(why=why, client_error=client_error):
            cooldown = timeouts.stuck_cooldown if client_error else timeouts.start_retry_cooldown
            return Outcome(Phase.FAILED, f"job not created: {why}", DocAction.RELEASE, "Failed",
                           cooldown=cooldown)
    raise TypeError(f"not an observation: {obs!r}")  # pragma: no cover


def _finished(obs: Finished) -> Outcome:
    status = _result_status(obs.result)
    if obs.succeeded:
        return Outcome(Phase.SUCCEEDED, "succeeded", DocAction.ADVANCE, "Succeeded", warning=False,
                       status=status)
    if obs.job_reason == DEADLINE_EXCEEDED:
        # Killed at activeDeadlineSeconds: the story's own failure (it overran), counted so
        # that a story that always overruns ends blocked instead of retrying forever.
        detail = f": {obs.job_message}" if obs.job_message else ""
        return Outcome(Phase.FAILED, f"deadline exceeded (the run passed activeDeadlineSeconds){detail}",
                       DocAction.COUNT_FAILURE, "DeadlineExceeded", counted=True, status=status)
    if obs.exit_code == ExitCode.FENCED:
        # A newer claim's run pushed first: this run was stale, not a failure of the story.
        return Outcome(Phase.LOST, "push fenced: a newer claim owns the branch", DocAction.RELEASE, "Fenced",
                       status=status)
    if obs.disrupted or obs.exit_code == ExitCode.TERMINATED:
        why = obs.disrupted or "runner terminated"
        return Outcome(Phase.RELEASED, f"disrupted ({why}); released", DocAction.RELEASE, "Disrupted",
                       status=status)
    if obs.exit_code is not None and obs.exit_code in AGENT_EVENTS:
        return _agent_ending(ExitCode(obs.exit_code), str(obs.result.get("error") or ""), status)
    why = str(obs.result.get("error") or "") or _job_failure(obs)
    if obs.exit_code is not None:
        why = f"exit code {obs.exit_code}: {why}"
    return Outcome(Phase.FAILED, why, DocAction.COUNT_FAILURE, "Failed", counted=True, status=status)


#: Exit codes about the model API or the agent's budget, and the Event each posts.
AGENT_EVENTS: Mapping[int, str] = {
    ExitCode.AGENT_AUTH: "AgentAuthFailed",
    ExitCode.AGENT_UNAVAILABLE: "AgentUnavailable",
    ExitCode.AGENT_BUDGET: "BudgetReached",
}


def _agent_ending(code: ExitCode, error: str, status: Mapping[str, Any]) -> Outcome:
    """The shared table (``contract.DISPOSITIONS``) decides counted or released and the node hold."""
    rule = disposition(code)
    why = f"exit code {int(code)}: {rule.reason}" + (f": {error}" if error else "")
    if rule.action is Action.COUNT:
        return Outcome(Phase.FAILED, why, DocAction.COUNT_FAILURE, AGENT_EVENTS[code], counted=True, status=status)
    return Outcome(Phase.RELEASED, f"{why}; claim released, not counted", DocAction.RELEASE, AGENT_EVENTS[code],
                   status=status, hold=rule.hold)


def escalate(outcome: Outcome, streak: int, max_retries: int) -> Outcome:
    """Count an uncounted, node-holding ending after ``max_retries`` of them in a row.

    The exit codes that release without counting (and pause the node) are reported by
    the run's own container, which the story's agent may influence: after
    ``max_retries`` such endings of one story in a row on this node, the next one is
    counted like a failure and does not hold the node, so a hostile story can neither
    retry forever nor keep pausing nodes. ``streak`` is how many came before this one.
    """
    if outcome.hold is NodeHold.NONE or outcome.action is not DocAction.RELEASE or streak < max_retries:
        return outcome
    return replace(outcome, phase=Phase.FAILED, action=DocAction.COUNT_FAILURE, counted=True, hold=NodeHold.NONE,
                   reason=outcome.reason.replace("; claim released, not counted", "")
                   + f"; counted: the story ended uncounted this way {streak} times in a row on this node")


def _job_failure(obs: Finished) -> str:
    reason = obs.job_reason or "Failed"
    return f"{reason}: {obs.job_message}" if obs.job_message else reason


def _result_status(result: Mapping[str, Any]) -> dict[str, Any]:
    if not result:
        return {}
    return {"result": dict(result), "commit": str(result.get("commit") or ""), "pushed": bool(result.get("pushed"))}


# ---------------------------------------------------------------------- wording

@dataclass(frozen=True, slots=True)
class Written:
    """What the document write of an outcome did (``None`` fields: nothing written)."""

    new_stage: str | None = None
    retries: int | None = None
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class Description:
    reason: str
    event: str
    message: str


def describe(outcome: Outcome, *, story_id: str, stage: str, job: str, written: Written,
             max_retries: int) -> Description:
    """Status reason, Event reason and Event message once the document write is known."""
    if outcome.action is DocAction.ADVANCE:
        moved = written.new_stage
        return Description(
            f"advanced to {moved}" if moved else "claim no longer ours", outcome.event,
            f"story {story_id} finished {stage}" + (f"; moved to {moved}" if moved else
                                                     "; the claim was no longer ours"))
    if outcome.action is DocAction.COUNT_FAILURE:
        retries = written.retries
        message = f"story {story_id} failed ({outcome.reason[:200]})" + (
            f"; retry {retries} of {max_retries}" if retries else "") + ("; story blocked" if written.blocked else "")
        return Description(outcome.reason[:300], "Blocked" if written.blocked else outcome.event, message)
    if outcome.delete_job:
        return Description(outcome.reason[:300], outcome.event, f"job {job} deleted: {outcome.reason}")
    return Description(outcome.reason[:300], outcome.event, f"story {story_id}: {outcome.reason}")


# ---------------------------------------------------------------------- recorded outcomes

def status_fields(outcome: Outcome) -> dict[str, Any]:
    """What a final StoryJob status records about its outcome, so that a restart can
    finish recording it: the document action, and whether it is confirmed yet."""
    return {"phase": outcome.phase.value, "reason": outcome.reason[:300], "action": outcome.action.value,
            "recorded": outcome.action is DocAction.NONE, **outcome.status}


def unrecorded(status: Mapping[str, Any]) -> Outcome | None:
    """The outcome a final StoryJob still has to write to the document, if any.

    StoryJobs written before outcomes were recorded carry no ``recorded`` field: their
    write is made again (every write is conditioned on the claim, epoch and stage, so a
    write that landed is a no-op): Succeeded advances, anything else releases.
    """
    phase = Phase.parse(status.get("phase"))
    if phase is None or not phase.final or status.get("recorded") is True:
        return None
    if "recorded" not in status:
        action = DocAction.ADVANCE if phase is Phase.SUCCEEDED else DocAction.RELEASE
    else:
        try:
            action = DocAction(str(status.get("action")))
        except ValueError:
            return None
    if action is DocAction.NONE:
        return None
    return Outcome(phase, str(status.get("reason") or ""), action, phase.value,
                   warning=phase is not Phase.SUCCEEDED, counted=action is DocAction.COUNT_FAILURE)
