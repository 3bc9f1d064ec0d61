"""Autoscaler-aware waiting in the engine: a node autoscaler's Events about an unschedulable build pod
extend its wait past the pending timeout or release its claim at once (on the fake clock; the real
Karpenter does both in tests/autoscale/test_scaleup_wait.py)."""

from __future__ import annotations

from typing import Any

UNSCHEDULABLE = {"phase": "Pending", "conditions": [
    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes: Insufficient cpu"}]}
NOMINATED = ("Nominated", "Pod should schedule on: nodeclaim/builds-abc", "karpenter")
NO_SCALE_UP = ("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached",
               "cluster-autoscaler")
KARPENTER_FAILED = ("FailedScheduling", "Failed to schedule pod, no instance type has enough resources", "karpenter")
SCHEDULER_FAILED = ("FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.", "default-scheduler")


async def pending_pod(h: Any, sid: str = "1_a") -> tuple[str, dict[str, Any]]:
    h.doc.add_story(sid, stage="2_current")
    await h.settle()
    name = h.job_name(sid)
    pod = h.kube.add_pod(name, status=UNSCHEDULABLE)
    await h.engine.on_pod_event("ADDED", pod)
    return name, pod


async def autoscaler_says(h: Any, pod: dict[str, Any], said: tuple[str, str, str], at: str = "") -> None:
    reason, message, source = said
    await h.engine.on_autoscaler_event("ADDED", h.kube.add_event(pod["metadata"]["name"], reason, message,
                                                                 source=source, at=at))
    await h.settle()


async def resync_after(h: Any, seconds: float) -> None:
    h.mono.advance(seconds)
    await h.engine.resync()
    await h.settle()


def condition(h: Any, name: str, kind: str) -> tuple[str, str]:
    found = [c for c in h.kube.storyjobs[name]["status"].get("conditions", []) if c["type"] == kind]
    assert len(found) == 1, h.kube.storyjobs[name]["status"]
    return found[0]["status"], found[0]["reason"]


async def test_a_node_coming_keeps_the_claim_past_the_pending_timeout_up_to_the_longer_bound(h):
    s = h.engine.ctx.settings
    name, pod = await pending_pod(h)
    await autoscaler_says(h, pod, NOMINATED)
    assert condition(h, name, "ScaleUp") == ("True", "Nominated")
    assert [e.reason for e in h.kube.events if e.reason == "ScaleUp"] == ["ScaleUp"]
    await resync_after(h, s.pending_timeout_seconds + 1)
    assert name in h.kube.jobs and "1_a" in h.engine.runs, "released although a node is coming"
    extended = [e for e in h.kube.events if e.reason == "WaitingForScaleUp"]
    assert len(extended) == 1 and "Nominated" in extended[0].message
    await resync_after(h, 1)
    assert len([e for e in h.kube.events if e.reason == "WaitingForScaleUp"]) == 1, "announced once"
    # The longer bound passes: the story goes back (as a stuck pod: Failed, not counted).
    await resync_after(h, s.pending_scale_up_timeout_seconds - s.pending_timeout_seconds)
    assert name not in h.kube.jobs
    status = h.kube.storyjobs[name]["status"]
    assert status["phase"] == "Failed" and "pending_scale_up_timeout_seconds" in status["reason"]
    story = h.doc.story("1_a")
    assert not story.claimed_by and story.retry_count == 0


async def test_no_scale_up_possible_releases_the_claim_at_once(h):
    name, pod = await pending_pod(h)
    await autoscaler_says(h, pod, NO_SCALE_UP)
    assert name not in h.kube.jobs, "the Job is deleted at once"
    status = h.kube.storyjobs[name]["status"]
    assert status["phase"] == "Released" and "max node group size reached" in status["reason"]
    assert condition(h, name, "ScaleUp") == ("False", "NotTriggerScaleUp")
    assert condition(h, name, "Succeeded") == ("False", "Released")
    events = [e for e in h.kube.events if e.reason == "NoScaleUp"]
    assert len(events) == 1 and events[0].warning and "cluster-autoscaler NotTriggerScaleUp" in events[0].message
    story = h.doc.story("1_a")
    assert not story.claimed_by and story.retry_count == 0, "another cluster may take it; nothing counted"
    # Not claimed straight back here: this cluster cannot fit it.
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert not h.doc.story("1_a").claimed_by


async def test_karpenters_failed_scheduling_releases_but_the_schedulers_does_not(h):
    name, pod = await pending_pod(h)
    await autoscaler_says(h, pod, SCHEDULER_FAILED)
    assert name in h.kube.jobs and h.engine.runs["1_a"].scale_signal is None
    await autoscaler_says(h, pod, KARPENTER_FAILED)
    assert name not in h.kube.jobs
    assert h.kube.storyjobs[name]["status"]["phase"] == "Released"
    assert condition(h, name, "ScaleUp") == ("False", "FailedScheduling")


async def test_a_verdict_before_the_pod_is_seen_unschedulable_is_applied_when_it_is(h):
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    name = h.job_name("1_a")
    pod = h.kube.add_pod(name, status={"phase": "Pending"})
    await h.engine.on_pod_event("ADDED", pod)
    await autoscaler_says(h, pod, NO_SCALE_UP)
    assert name in h.kube.jobs, "the pod is not known to be unschedulable yet"
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod["metadata"]["name"], UNSCHEDULABLE))
    await h.settle()
    assert name not in h.kube.jobs and h.kube.storyjobs[name]["status"]["phase"] == "Released"


async def test_a_newer_scale_up_overrides_an_older_refusal_and_an_older_one_is_ignored(h):
    s = h.engine.ctx.settings
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    name = h.job_name("1_a")
    pod = h.kube.add_pod(name, status={"phase": "Pending"})
    await h.engine.on_pod_event("ADDED", pod)
    await autoscaler_says(h, pod, NO_SCALE_UP, at="2026-01-01T00:00:00Z")
    await autoscaler_says(h, pod, NOMINATED, at="2026-01-01T00:00:05Z")
    await autoscaler_says(h, pod, NO_SCALE_UP, at="2026-01-01T00:00:01Z")  # late delivery of an old one
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod["metadata"]["name"], UNSCHEDULABLE))
    await resync_after(h, s.pending_timeout_seconds + 1)
    assert name in h.kube.jobs and condition(h, name, "ScaleUp") == ("True", "Nominated")


async def test_a_missed_event_is_found_by_the_resync_before_giving_up(h):
    s = h.engine.ctx.settings
    name, pod = await pending_pod(h)
    reason, message, source = NOMINATED
    h.kube.add_event(pod["metadata"]["name"], reason, message, source=source)  # no watch event delivered
    await resync_after(h, s.pending_timeout_seconds + 1)
    assert name in h.kube.jobs, "the listed Nominated event extends the wait"
    assert ("list_events", f"involvedObject.name={pod['metadata']['name']}") in h.kube.calls
    assert condition(h, name, "ScaleUp") == ("True", "Nominated")


async def test_listing_events_failing_falls_back_to_the_plain_timeout(h):
    s = h.engine.ctx.settings
    name, _pod = await pending_pod(h)
    h.kube.fail("list_events", 403)
    await resync_after(h, s.pending_timeout_seconds + 1)
    assert name not in h.kube.jobs and h.kube.storyjobs[name]["status"]["phase"] == "Failed"


async def test_verdicts_about_other_pods_change_nothing(h):
    name, pod = await pending_pod(h)
    other = {**pod, "metadata": {**pod["metadata"], "name": "someone-elses-pod-x1"}}
    await autoscaler_says(h, other, NO_SCALE_UP)
    await h.engine.on_autoscaler_event("DELETED", h.kube.add_event(pod["metadata"]["name"], *NO_SCALE_UP[:2],
                                                                   source=NO_SCALE_UP[2]))
    await h.settle()
    assert name in h.kube.jobs and h.engine.runs["1_a"].scale_signal is None


async def test_a_verdict_about_a_running_pod_is_history(h):
    name, pod = await pending_pod(h)
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod["metadata"]["name"], {"phase": "Running"}))
    await autoscaler_says(h, pod, NOMINATED)
    assert h.engine.runs["1_a"].scale_signal is None and not [e for e in h.kube.events if e.reason == "ScaleUp"]
