"""Job and Pod events in, observations out: what happened to a run, judged from the
objects Kubernetes reports (watch events, and the resync's listings as a safety net)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from huskies_agent.engine import conditions, lifecycle
from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import Disrupted, Finished, JobGone, Stuck, decide
from huskies_agent.engine.phases import StuckKind
from huskies_agent.engine.runs import Run
from huskies_agent.k8s import objects

log = logging.getLogger("huskies_agent.engine")


# ---------------------------------------------------------------------- pure readers

def finished(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Finished | None:
    """What a finished Job and its pods say about the run (``None``: not finished)."""
    condition = objects.job_condition(job)
    if condition is None:
        return None
    exit_code, message, disrupted = None, "", None
    for pod in pods:
        code, msg = objects.pod_termination(pod)
        if code is not None:
            exit_code, message = code, msg
        disrupted = disrupted or objects.pod_was_disrupted(pod)
    reason, detail = objects.job_failure(job)
    return Finished(succeeded=condition == "Complete", exit_code=exit_code, result=objects.parse_result(message),
                    disrupted=disrupted, job_reason=reason, job_message=detail)


_PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


def stuck(pod: Mapping[str, Any]) -> tuple[StuckKind, str] | None:
    """Why a pod cannot start, if it cannot: the kind and the waiting reason or message."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _PULL_ERRORS or reason in _CONFIG_ERRORS:
            kind = StuckKind.IMAGE if reason in _PULL_ERRORS else StuckKind.CONFIG
            return kind, f"{reason}: {waiting.get('message', '')}".strip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and (
            cond.get("reason") == "Unschedulable"
        ):
            return StuckKind.UNSCHEDULABLE, str(cond.get("message") or "Unschedulable")
    return None


def stuck_limit(ctx: Context, kind: StuckKind) -> float:
    s = ctx.settings
    return {StuckKind.IMAGE: s.image_pull_timeout_seconds, StuckKind.CONFIG: s.image_pull_timeout_seconds,
            StuckKind.UNSCHEDULABLE: s.pending_timeout_seconds, StuckKind.NO_POD: s.no_pod_timeout_seconds}[kind]


def overdue(ctx: Context, run: Run, now: float) -> Stuck | None:
    """The stuck observation of a run whose pod has not started for too long."""
    for kind, since in run.stuck_since.items():
        if now - since > stuck_limit(ctx, kind):
            return Stuck(kind, run.stuck_detail)
    return None


def _own_run(ctx: Context, obj: Mapping[str, Any]) -> Run | None:
    spec = objects.run_spec_from_object(obj)
    if spec is None or spec.node != ctx.me:
        return None
    run = ctx.table.get(spec.story_id)
    if run is None or run.spec != spec or run.ending:
        return None
    return run


# ---------------------------------------------------------------------- events

async def on_job_event(ctx: Context, event_type: str, job: Mapping[str, Any]) -> None:
    run = _own_run(ctx, job)
    if run is None:
        return
    if event_type == "DELETED":
        await lifecycle.end_run(ctx, run, decide(JobGone()))
    elif objects.job_condition(job) is not None:
        await finish(ctx, run, job)
    elif ((job.get("status") or {}).get("active") or 0) > 0:
        await lifecycle.mark_running(ctx, run)


async def on_pod_event(ctx: Context, event_type: str, pod: Mapping[str, Any]) -> None:
    if event_type == "DELETED":
        return
    run = _own_run(ctx, pod)
    if run is None:
        return
    run.pod_seen = True
    run.stuck_since.pop(StuckKind.NO_POD, None)
    why = objects.pod_was_disrupted(pod)
    if why:
        # Evicted, drained or preempted: hand the story off now, not after the dead-node timeout.
        ctx.metrics.claims.labels("released").inc()
        await lifecycle.end_run(ctx, run, decide(Disrupted(why)))
        return
    scheduled = conditions.pod_scheduled(pod)
    if scheduled is not None:
        await lifecycle.note_condition(ctx, run, scheduled)
    if (pod.get("status") or {}).get("phase") == "Running" and not run.running_seen:
        run.running_seen = True
        if run.claimed_at is not None:
            ctx.metrics.claim_to_running.observe(ctx.mono() - run.claimed_at)
    found = stuck(pod)
    if found is None:
        run.stuck_since.clear()
        run.stuck_detail = ""
        return
    kind, detail = found
    run.stuck_since.setdefault(kind, ctx.mono())
    run.stuck_detail = detail


async def finish(ctx: Context, run: Run, job: Mapping[str, Any]) -> None:
    """End a run whose Job finished, judged by the Job and its pods."""
    try:
        pods = await ctx.kube.list_pods(f"job-name={run.spec.name}")
    except Exception as exc:
        log.warning("could not read the pods of finished job %s (%s); retrying at the next resync",
                    run.spec.name, exc)
        return
    obs = finished(job, pods)
    if obs is not None:
        await lifecycle.end_run(ctx, run, decide(obs))


# ---------------------------------------------------------------------- safety nets

async def check_jobs(ctx: Context) -> None:
    """Missed watch events: finish or drop runs by their Jobs' state."""
    # Only runs whose Job existed before the list started can be judged by the list.
    candidates = [run for run in ctx.table.runs.values() if run.job_created and not run.ending]
    try:
        jobs = {j["metadata"]["name"]: j for j in await ctx.kube.list_jobs(ctx.selector)}
    except Exception as exc:
        log.warning("could not list jobs for the resync: %s", exc)
        return
    for run in candidates:
        if not ctx.table.is_current(run):
            continue
        job = jobs.get(run.spec.name)
        if job is None:
            await lifecycle.end_run(ctx, run, decide(JobGone()))
        elif objects.job_condition(job) is not None:
            await finish(ctx, run, job)


async def check_stuck(ctx: Context) -> None:
    """Runs whose pod could not start (or that got no pod) for too long give the story back."""
    now = ctx.mono()
    for run in list(ctx.table.runs.values()):
        if run.ending or not run.job_created:
            continue
        if not run.pod_seen and StuckKind.NO_POD not in run.stuck_since:
            run.stuck_since[StuckKind.NO_POD] = run.started
        late = overdue(ctx, run, now)
        if late is None:
            continue
        if late.kind is StuckKind.NO_POD:
            pods = await ctx.kube.list_pods(f"job-name={run.spec.name}")
            if pods:
                for pod in pods:
                    await on_pod_event(ctx, "MODIFIED", pod)
                continue
        await lifecycle.end_run(ctx, run, decide(late, timeouts=lifecycle.timeouts(ctx)))
