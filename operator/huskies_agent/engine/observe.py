"""Job and Pod events in, observations out: what happened to a run, judged from the
objects Kubernetes reports (watch events, and the resync's listings as a safety net).

A node autoscaler's Events about a run's pod (``engine.scaleup``) come in here too: they
extend or cut short the wait of an unschedulable pod."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from huskies_agent.engine import conditions, lifecycle, scaleup
from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import Disrupted, Finished, JobGone, NoScaleUp, Stuck, decide
from huskies_agent.engine.phases import StuckKind
from huskies_agent.engine.runs import Run
from huskies_agent.engine.scaleup import Verdict, Wait, Why
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


def scale_limits(ctx: Context) -> scaleup.Limits:
    s = ctx.settings
    return scaleup.Limits(s.pending_timeout_seconds, s.pending_scale_up_timeout_seconds)


def pending_decision(ctx: Context, run: Run, now: float) -> tuple[scaleup.Decision, float]:
    """Keep, extend or release, for the run's pod, and how long it has been unschedulable."""
    since = run.stuck_since.get(StuckKind.UNSCHEDULABLE)
    waited = None if since is None else now - since
    signals = [run.scale_signal] if run.scale_signal is not None else []
    return scaleup.decide(waited, signals, scale_limits(ctx)), waited or 0.0


def overdue(ctx: Context, run: Run, now: float) -> Stuck | NoScaleUp | None:
    """The observation of a run whose pod has not started for too long (or cannot get a node)."""
    for kind, since in run.stuck_since.items():
        if kind is StuckKind.UNSCHEDULABLE:
            decision, waited = pending_decision(ctx, run, now)
            if decision.wait is not Wait.RELEASE:
                continue
            if decision.why is Why.NO_SCALE_UP:
                return NoScaleUp(decision.describe(waited, scale_limits(ctx)))
            if decision.why is Why.SCALE_UP_TIMEOUT:
                return Stuck(kind, f"{run.stuck_detail}; {decision.describe(waited, scale_limits(ctx))}")
            return Stuck(kind, run.stuck_detail)
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
    run.pod_name = str((pod.get("metadata") or {}).get("name") or run.pod_name)
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
    if kind is StuckKind.UNSCHEDULABLE and run.scale_signal is not None:
        await judge_pending(ctx, run)  # the autoscaler's verdict came before the scheduler's


# ---------------------------------------------------------------------- autoscaler Events

def _run_of_pod(ctx: Context, pod_name: str) -> Run | None:
    for run in ctx.table.runs.values():
        if run.ending:
            continue
        # A Job's pod is named <job>-<suffix>; the name seen on the pod itself is the surest.
        if run.pod_name == pod_name or (not run.pod_name and pod_name.rsplit("-", 1)[0] == run.spec.name):
            return run
    return None


async def on_autoscaler_event(ctx: Context, event_type: str, event: Mapping[str, Any]) -> None:
    """A core/v1 Event in the namespace: a node autoscaler's verdict on one of this node's pods."""
    if event_type == "DELETED":
        return
    read = scaleup.read_event(event)
    if read is None:
        return
    pod_name, signal = read
    run = _run_of_pod(ctx, pod_name)
    # A verdict about a pod that already runs is history (e.g. listed again after a restart).
    if run is None or run.running_seen or not await note_signal(ctx, run, signal):
        return
    await judge_pending(ctx, run)


async def note_signal(ctx: Context, run: Run, signal: scaleup.Signal) -> bool:
    """Keep the newest verdict; a change of verdict is written as the ScaleUp condition (and an Event
    when a node is coming). False when ``signal`` is older than the one held."""
    old = run.scale_signal
    if old is not None and signal.at < old.at:
        return False
    run.scale_signal = signal
    if old is not None and old.verdict is signal.verdict:
        return True
    scaling = signal.verdict is Verdict.SCALING
    await lifecycle.note_condition(ctx, run, conditions.Condition(
        conditions.ConditionType.SCALE_UP, conditions.Status.TRUE if scaling else conditions.Status.FALSE,
        signal.reason, signal.describe()))
    if scaling and run.storyjob is not None:
        log.info("story %s: pod %s waits for a node: %s", run.spec.story_id, run.pod_name, signal.describe())
        async with ctx.followup_slots:
            await ctx.kube.post_event(run.storyjob, reason="ScaleUp",
                                      message=f"the node autoscaler is adding a node for pod {run.pod_name}: "
                                              f"{signal.describe()}")
    return True


async def refresh_signals(ctx: Context, run: Run) -> None:
    """The resync's safety net for missed watch events (or a failover): read the pod's Events."""
    try:
        events = await ctx.kube.list_events(f"involvedObject.name={run.pod_name}")
    except Exception as exc:
        log.warning("could not list the events of pod %s: %s", run.pod_name, exc)
        return
    reads = (scaleup.read_event(e) for e in events)
    newest = scaleup.latest(read[1] for read in reads if read is not None and read[0] == run.pod_name)
    if newest is not None:
        await note_signal(ctx, run, newest)


async def judge_pending(ctx: Context, run: Run) -> None:
    """Release the claim at once when the autoscaler says no node can come for the unschedulable pod."""
    if not ctx.table.is_current(run):
        return
    decision, waited = pending_decision(ctx, run, ctx.mono())
    if decision.wait is Wait.RELEASE and decision.why is Why.NO_SCALE_UP:
        ctx.metrics.claims.labels("released").inc()
        await lifecycle.end_run(ctx, run, decide(NoScaleUp(decision.describe(waited, scale_limits(ctx))),
                                                 timeouts=lifecycle.timeouts(ctx)))


async def announce_extension(ctx: Context, run: Run, now: float) -> None:
    """Say once (Event, log) that an unschedulable pod waits past the pending timeout for a node."""
    decision, waited = pending_decision(ctx, run, now)
    if decision.wait is not Wait.EXTEND or run.scale_extended:
        return
    run.scale_extended = True
    words = decision.describe(waited, scale_limits(ctx))
    log.info("story %s (job %s): %s", run.spec.story_id, run.spec.name, words)
    if run.storyjob is not None:
        async with ctx.followup_slots:
            await ctx.kube.post_event(run.storyjob, reason="WaitingForScaleUp", message=words)


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
        since = run.stuck_since.get(StuckKind.UNSCHEDULABLE)
        if (since is not None and run.scale_signal is None and run.pod_name
                and now - since > ctx.settings.pending_timeout_seconds):
            await refresh_signals(ctx, run)  # before giving up: did the autoscaler say something?
            if not ctx.table.is_current(run):
                continue
        late = overdue(ctx, run, now)
        if late is None:
            await announce_extension(ctx, run, now)
            continue
        if isinstance(late, NoScaleUp):
            ctx.metrics.claims.labels("released").inc()
        elif late.kind is StuckKind.NO_POD:
            pods = await ctx.kube.list_pods(f"job-name={run.spec.name}")
            if pods:
                for pod in pods:
                    await on_pod_event(ctx, "MODIFIED", pod)
                continue
        await lifecycle.end_run(ctx, run, decide(late, timeouts=lifecycle.timeouts(ctx)))
