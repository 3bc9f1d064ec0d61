"""Stuck pods and the pending / no-pod timeouts, on the engine's injected monotonic clock."""

from __future__ import annotations

import pytest


async def started(h, sid="1_a"):
    h.doc.add_story(sid, stage="2_current")
    await h.settle()
    return h.job_name(sid)


def waiting(reason, message="boom"):
    return {"phase": "Pending", "containerStatuses": [
        {"name": "runner", "state": {"waiting": {"reason": reason, "message": message}}}]}


UNSCHEDULABLE = {"phase": "Pending", "conditions": [
    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes: Insufficient cpu"}]}


@pytest.mark.parametrize(("status", "limit", "words"), [
    (waiting("ImagePullBackOff"), "image_pull_timeout_seconds", "ImagePullBackOff"),
    (waiting("CreateContainerConfigError", "secret missing"), "image_pull_timeout_seconds", "secret missing"),
    (UNSCHEDULABLE, "pending_timeout_seconds", "Insufficient cpu"),
], ids=["image", "config", "unschedulable"])
async def test_stuck_pod_fails_the_run_after_its_timeout_and_releases(h, status, limit, words):
    name = await started(h)
    pod = h.kube.add_pod(name, status=status)
    await h.engine.on_pod_event("ADDED", pod)
    seconds = getattr(h.engine.ctx.settings, limit)
    h.mono.advance(seconds - 1)
    await h.engine.resync()
    await h.settle()
    assert name in h.kube.jobs, "stopped before the timeout"
    h.mono.advance(2)
    await h.engine.resync()
    await h.settle()
    assert name not in h.kube.jobs
    sj = h.kube.storyjobs[name]
    assert sj["status"]["phase"] == "Failed" and words in sj["status"]["reason"]
    story = h.doc.story("1_a")
    assert not story.claimed_by and story.retry_count == 0, "infrastructure trouble is not the story's failure"
    # Cooling down for the pending timeout: not claimed straight back.
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert not h.doc.story("1_a").claimed_by


async def test_a_pod_that_recovers_is_not_stopped(h):
    name = await started(h)
    pod = h.kube.add_pod(name, status=waiting("ErrImagePull"))
    await h.engine.on_pod_event("ADDED", pod)
    h.mono.advance(100)
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod["metadata"]["name"], {"phase": "Running"}))
    h.mono.advance(1000)
    await h.engine.resync()
    await h.settle()
    assert name in h.kube.jobs and "1_a" in h.engine.runs


async def test_job_without_a_pod_fails_after_the_no_pod_timeout(h):
    name = await started(h)
    h.mono.advance(h.engine.ctx.settings.no_pod_timeout_seconds - 1)
    await h.engine.resync()
    await h.settle()
    assert name in h.kube.jobs
    h.mono.advance(2)
    await h.engine.resync()
    await h.settle()
    assert name not in h.kube.jobs
    assert "no pod" in h.kube.storyjobs[name]["status"]["reason"]
    assert not h.doc.story("1_a").claimed_by


async def test_a_pod_found_by_listing_saves_the_run_from_the_no_pod_timeout(h):
    name = await started(h)
    h.kube.add_pod(name, status={"phase": "Running"})  # the watch event was missed
    h.mono.advance(h.engine.ctx.settings.no_pod_timeout_seconds + 1)
    await h.engine.resync()
    await h.settle()
    assert name in h.kube.jobs and h.engine.runs["1_a"].pod_seen


async def test_evicted_pod_hands_the_story_off_at_once(h):
    name = await started(h)
    pod = h.kube.add_pod(name, status={"phase": "Failed", "reason": "Evicted"})
    await h.engine.on_pod_event("MODIFIED", pod)
    await h.settle()
    assert name not in h.kube.jobs
    story = h.doc.story("1_a")
    assert story.retry_count == 0
    assert not story.claimed_by or story.epoch > 1
