"""One operator against the real control plane and a real rendezvous: the story lifecycle."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tests.e2e.harness import eventually, first_storyjob, flush, kube, metrics_text, pipeline, pretend_node

from huskies_agent.k8s import naming

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

RESULT = json.dumps({"branch": "feature/story-x", "commit": "0123abc", "pushed": True})


def phases(sjs):
    return sorted((sj["spec"]["storyId"], sj["spec"]["stage"], (sj.get("status") or {}).get("phase")) for sj in sjs)


async def test_story_goes_through_stages_with_one_job_each(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    proc, port = start_op("alpha", ns, env={
        "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/termination-message": RESULT,
                                                     "test.huskies/run-for": "300ms"})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        history: list[tuple[str, str, int]] = []
        doc.add_listener(lambda ch: history.append(
            (doc.story("7_demo").stage, doc.story("7_demo").claimed_by, doc.story("7_demo").epoch))
            if "7_demo" in ch.stories and doc.story("7_demo") else None)
        doc.add_story("7_demo", stage="2_current", name="A demo story")
        await flush(doc)

        await eventually(lambda: doc.story("7_demo").stage == "5_done", 90, what="story done")
        sjs = await k.list_storyjobs("")
        assert phases(sjs) == [("7_demo", "2_current", "Succeeded"), ("7_demo", "3_qa", "Succeeded"),
                               ("7_demo", "4_merge", "Succeeded")], phases(sjs)
        first = next(sj for sj in sjs if sj["spec"]["stage"] == "2_current")
        assert first["status"]["commit"] == "0123abc" and first["status"]["pushed"] is True
        assert first["spec"]["node"] and first["spec"]["epoch"] == 1
        # After the coder stage the story was seen in 3_qa and unclaimed before the QA claim.
        assert ("3_qa", "", 1) in history, history
        jobs = await k.list_jobs("")
        assert sorted(j["metadata"]["name"] for j in jobs) == sorted(sj["metadata"]["name"] for sj in sjs)
        for job in jobs:
            assert job["metadata"]["ownerReferences"][0]["kind"] == "StoryJob"
            assert job["spec"]["backoffLimit"] == 0
            assert job["metadata"]["labels"][naming.LABEL_STORY] == "7_demo"
        text = metrics_text(port)
        assert 'huskies_claims_total{outcome="won"} 3.0' in text
        assert "huskies_claim_to_job_seconds_count 3.0" in text
        assert proc.alive


async def test_failing_job_counts_retries_and_blocks(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("failing", ns, env={"HUSKIES_MAX_RETRIES": "3", "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps(
        {"test.huskies/exit-code": "3", "test.huskies/termination-message":
         json.dumps({"error": "agent crashed", "pushed": False})})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("9_fails", stage="2_current")
        await flush(doc)
        story = await eventually(lambda: doc.story("9_fails").blocked and doc.story("9_fails"), 90,
                                 what="story blocked")
        assert story.retry_count == 3 and story.stage == "2_current" and not story.claimed_by
        assert "agent crashed" in story.last_error and "exit code 3" in story.last_error
        sjs = await k.list_storyjobs("")
        assert phases(sjs) == [("9_fails", "2_current", "Failed")] * 3
        assert sorted(sj["spec"]["epoch"] for sj in sjs) == [1, 2, 3]
        await asyncio.sleep(2)  # blocked: never claimed again
        assert len(await k.list_storyjobs("")) == 3
        doc.set_blocked("9_fails", False, reset_retries=True)
        await flush(doc)
        await eventually(lambda: doc.story("9_fails").retry_count >= 1 and len(
            [s for s in (doc.story("9_fails"),) if s.epoch >= 4]), 60, what="unblocked story retried")


async def test_fenced_push_is_not_counted_as_a_failure(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("fenced", ns, env={"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/exit-code": "14"}),
                                "HUSKIES_MAX_CONCURRENT": "1"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("8_fenced", stage="2_current")
        await flush(doc)
        sj = await eventually(lambda: first_storyjob(k, "Lost"), 60, what="storyjob marked Lost")
        assert "fenced" in sj["status"]["reason"]
        assert doc.story("8_fenced").retry_count == 0 and not doc.story("8_fenced").blocked



async def test_lost_claim_deletes_job_at_once(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("loser", ns, env={"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("3_contested", stage="2_current")
        await flush(doc)
        jobs = await eventually(lambda: k.list_jobs(""), 30, what="job created")
        name = jobs[0]["metadata"]["name"]
        await eventually(lambda: k.list_pods(f"job-name={name}"), 30, what="pod created")
        # Another (live) node wins the story: our claim is overwritten with a newer epoch.
        pretend_node(doc, "other-node")
        doc.claim("3_contested", "other-node", time.time())
        await flush(doc)
        started = time.monotonic()
        await eventually(lambda: _gone(k, name), 10, interval=0.02, what="job deleted")
        deleted_after = time.monotonic() - started
        assert deleted_after < 2.0, deleted_after
        sj = (await k.list_storyjobs(""))[0]
        await eventually(lambda: _phase(k, sj["metadata"]["name"], "Lost"), 10, what="storyjob marked Lost")
        # The live winner's claim stands: we do not take it back, however old it gets.
        await asyncio.sleep(2)
        assert doc.story("3_contested").claimed_by == "other-node"
        assert len(await k.list_jobs("")) == 0


async def test_hostile_ids_and_malformed_entries_never_crash(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    proc, _ = start_op("robust", ns)
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        hostile = ["../../x", "$(rm -rf /)", "a" * 300, "x; touch /tmp/pwned", "名前 with space"]
        doc.add_stories([{"story_id": sid, "stage": "2_current"} for sid in hostile])
        doc.add_stories([{"story_id": "50_bad_stage", "stage": "9_nowhere"},
                         {"story_id": "51_bad_retry", "stage": "2_current", "retry_count": "lots"},
                         {"story_id": "52_bad_claim", "stage": "2_current", "claim": [1, 2]}])
        doc.add_story("53_ünïcode_ok", stage="4_merge")
        await flush(doc)
        await eventually(lambda: doc.story("53_ünïcode_ok").stage == "5_done", 60, what="valid story done")
        sjs = await k.list_storyjobs("")
        assert [sj["spec"]["storyId"] for sj in sjs] == ["53_ünïcode_ok"]
        assert proc.alive
        assert "Traceback" not in proc.log()


async def _gone(k, name):
    try:
        await k.get_job(name)
    except Exception as exc:
        return getattr(exc, "status", None) == 404
    return False


async def _phase(k, name, phase):
    sj = await k.get_storyjob(name)
    return (sj.get("status") or {}).get("phase") == phase


async def test_archived_or_removed_story_leaves_nothing_running(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("archivist", ns, env={"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_stories([{"story_id": "20_archived", "stage": "2_current"},
                         {"story_id": "21_removed", "stage": "2_current"}])
        await flush(doc)
        await eventually(lambda: _count_jobs(k, 2), 30, what="two jobs")
        doc.move("20_archived", "6_archived")
        doc.remove_story("21_removed")
        await flush(doc)
        await eventually(lambda: _count_jobs(k, 0, exact=True), 10, what="jobs deleted")
        sjs = await k.list_storyjobs("")
        await eventually(lambda: _all_phase(k, "Cancelled"), 10, what="storyjobs cancelled")
        assert len(sjs) == 2


async def test_finished_storyjobs_are_cleaned_up_after_their_ttl(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("janitor", ns, env={"HUSKIES_FINISHED_TTL_SECONDS": "3"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("30_done_soon", stage="4_merge")
        await flush(doc)
        await eventually(lambda: doc.story("30_done_soon").stage == "5_done", 60, what="story done")
        assert len(await k.list_storyjobs("")) == 1
        await eventually(lambda: _count_storyjobs(k, 0), 30, what="finished storyjob deleted after its ttl")


async def test_unpullable_image_fails_the_storyjob_and_releases(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("puller", ns, env={"HUSKIES_BUILD_IMAGE": "registry.invalid/unpullable:1",
                                "HUSKIES_IMAGE_PULL_TIMEOUT_SECONDS": "2"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("40_bad_image", stage="2_current")
        await flush(doc)
        sj = await eventually(lambda: first_storyjob(k, "Failed"), 60, what="storyjob failed")
        assert "ImagePull" in sj["status"]["reason"] or "ErrImagePull" in sj["status"]["reason"]
        await eventually(lambda: not doc.story("40_bad_image").claimed_by, 10, what="claim released")
        assert doc.story("40_bad_image").retry_count == 0
        assert await k.list_jobs("") == []


async def _count_jobs(k, n, exact=False):
    jobs = await k.list_jobs("")
    return len(jobs) == n if exact else len(jobs) >= n


async def _count_storyjobs(k, n):
    return len(await k.list_storyjobs("")) == n


async def _all_phase(k, phase):
    sjs = await k.list_storyjobs("")
    return sjs and all((sj.get("status") or {}).get("phase") == phase for sj in sjs)


async def test_deadline_kills_are_counted_and_end_blocked(start_op, namespace_factory, rendezvous, cluster):
    # Issue 10, finding 7: a run killed at activeDeadlineSeconds is the story's failure.
    ns = namespace_factory()
    start_op("overrun", ns, env={"HUSKIES_MAX_RETRIES": "2", "HUSKIES_BUILD_ACTIVE_DEADLINE_SECONDS": "2",
                                 "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("10_overruns", stage="2_current")
        await flush(doc)
        story = await eventually(lambda: doc.story("10_overruns").blocked and doc.story("10_overruns"), 90,
                                 what="story blocked after two deadline kills")
        assert story.retry_count == 2 and "deadline exceeded" in story.last_error
        sjs = await k.list_storyjobs("")
        assert phases(sjs) == [("10_overruns", "2_current", "Failed")] * 2
        assert all("deadline exceeded" in sj["status"]["reason"] for sj in sjs)
        assert all(sj["status"]["recorded"] is True for sj in sjs)
