"""Claims under real faults (issue 10): outages, partitions, clock skew, shared namespaces, downtime.

Every operator here is a real process on the real control plane (kwok runs the pods), talking to a
real rendezvous either directly or through a TCP proxy (``tests.helpers.tcpproxy``) that the test
cuts and heals. The claim timeout is a few seconds so the faults happen in test time. The test's
own pipeline peer is connected to the rendezvous directly and records every stage each story was
seen in, so a stage that goes back or is advanced twice shows up in its history.

kwok pods do not run the runner, so checkpoint/resume and push fencing (the runner's part of I6)
are not covered here; what is covered is what the operator decides: who runs which claim, which
Jobs it deletes, and which completion wins in the document.
"""

from __future__ import annotations

import asyncio
import collections
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from tests.e2e.harness import (
    JobLog,
    JobRecord,
    Proc,
    StageLog,
    eventually,
    flush,
    insecure_kubeconfig,
    kube,
    pipeline,
    presence_changed,
    start_operator,
    start_rendezvous,
    wait_http,
)
from tests.helpers.tcpproxy import TcpProxy

from huskies_agent.k8s.api import Kube
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent_dev.devcluster import ControlPlane

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

#: Short enough for test time, long enough that a loaded 2-core machine does not miss a heartbeat
#: (presence is written every second, see FAST).
CLAIM_TIMEOUT = 5.0
TIMEOUTS = {"HUSKIES_CLAIM_TIMEOUT_SECONDS": str(CLAIM_TIMEOUT)}
FINAL = ("Succeeded", "Failed", "Lost", "Cancelled")


def run_for(duration: str, **extra: str) -> dict[str, str]:
    """Settings that make every build pod of an operator run ``duration`` (kwok, see kwok-stages.yaml)."""
    return {"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": duration, **extra})}


# ---------------------------------------------------------------------------------------------- fixtures
@dataclass
class Node:
    """One operator process (one install = one build node) and how the test reaches it."""

    name: str
    namespace: str
    proc: Proc
    proxy: TcpProxy | None = None
    node_id: str = ""


class Nodes:
    """Starts operators against a given rendezvous URL (directly or through a fresh proxy)."""

    def __init__(self, cluster: ControlPlane, log_dir: Path, procs: list[Proc]) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.procs = procs
        self.proxies: list[TcpProxy] = []

    async def proxy_to(self, url: str, name: str = "") -> TcpProxy:
        target = urlparse(url)
        assert target.hostname and target.port
        proxy = await TcpProxy(target.hostname, target.port, name=name).start()
        self.proxies.append(proxy)
        return proxy

    async def start(self, name: str, namespace: str, rendezvous: str, env: dict[str, str] | None = None, *,
                    proxied: bool = False, kubeconfig: str | None = None) -> Node:
        proxy = await self.proxy_to(rendezvous, f"proxy:{name}") if proxied else None
        url = rendezvous
        if proxy is not None:
            url = proxy.url(path=urlparse(rendezvous).path)
        node_id = f"node-{name}"  # fixed, so the test knows it before the node writes anything
        proc, _ = start_operator(name, kubeconfig=kubeconfig or str(self.cluster.kubeconfig_path),
                                 namespace=namespace, rendezvous=url, log_dir=self.log_dir,
                                 env={"HUSKIES_NODE_ID": node_id, **(env or {})})
        self.procs.append(proc)
        return Node(name, namespace, proc, proxy, node_id)

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()


@pytest.fixture
async def nodes(storyjob_crd: ControlPlane, log_dir: Path, procs: list[Proc]) -> AsyncIterator[Nodes]:
    made = Nodes(storyjob_crd, log_dir, procs)
    try:
        yield made
    finally:
        await made.close()


async def present(doc: PipelineDoc, *nodes: Node, timeout: float = 60.0) -> None:
    """Wait until every node has written its presence (it is leader, connected and synced)."""
    for node in nodes:
        await eventually(lambda n=node: n.node_id in doc.nodes, timeout,  # type: ignore[misc]
                         what=f"presence of {node.name}")


async def storyjobs(*kubes: Kube) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in kubes:
        out += await k.list_storyjobs("")
    return out


def phase(sj: dict[str, Any]) -> str:
    return str((sj.get("status") or {}).get("phase") or "")


def describe(sjs: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{sj['metadata']['namespace']}/{sj['metadata']['name']} story={sj['spec'].get('storyId')} "
        f"stage={sj['spec'].get('stage')} node={sj['spec'].get('node')} epoch={sj['spec'].get('epoch')} "
        f"phase={phase(sj)} reason={(sj.get('status') or {}).get('reason', '')!r}"
        for sj in sjs)


def describe_jobs(records: list[JobRecord]) -> str:
    return "; ".join(f"{r.namespace}/{r.name} stage={r.stage} state={r.state} gone={r.gone} "
                     f"deleting={r.deleting}" for r in records)


async def holds(check: Callable[[], bool], seconds: float, what: str) -> None:
    """``check`` stays true for ``seconds`` (a window for a late, wrong write to show up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        await asyncio.sleep(0.1)
    assert check(), what


async def hand_out(doc: PipelineDoc, jobs: JobLog, first: Node, second: Node, first_ids: list[str],
                   second_ids: list[str], *, stage: str) -> None:
    """Let ``first`` claim ``first_ids`` and then ``second`` claim ``second_ids``, with no race.

    ``second`` does not see the first stories appear (its link is cut), and ``first`` has no room
    left for the second ones (its max_concurrent is the size of its share).
    """
    assert second.proxy is not None
    await second.proxy.cut()
    doc.add_stories([{"story_id": sid, "stage": stage} for sid in first_ids])
    await flush(doc)
    await eventually(lambda: len([r for r in jobs.active() if r.namespace == first.namespace]) >= len(first_ids),
                     60, what=f"{first.name} runs its {len(first_ids)} stories")
    await second.proxy.heal()
    await presence_changed(doc, second.node_id)
    doc.add_stories([{"story_id": sid, "stage": stage} for sid in second_ids])
    await flush(doc)
    await eventually(lambda: len([r for r in jobs.active() if r.namespace == second.namespace])
                     >= len(second_ids), 60, what=f"{second.name} runs its {len(second_ids)} stories")


async def within(awaitable: Awaitable[Any], seconds: float) -> None:
    """Wait for ``awaitable`` at most ``seconds``; going on without it is fine."""
    try:
        await asyncio.wait_for(awaitable, seconds)
    except (TimeoutError, AssertionError):
        pass


# ---------------------------------------------------------------------------------- rendezvous outage
async def test_rendezvous_outage_of_twice_the_claim_timeout_deletes_no_job(
        nodes: Nodes, namespace_factory: Callable[[], str], storyjob_crd: ControlPlane, log_dir: Path,
        procs: list[Proc]) -> None:
    """Findings 1 and 4 of issue 10 (I3, I4): nobody judges anybody dead while everybody is cut off."""
    server, url = start_rendezvous(log_dir)
    procs.append(server)
    healthz = f"http://127.0.0.1:{urlparse(url).port}/healthz"
    ns_a, ns_b = namespace_factory(), namespace_factory()
    # Three slots each: each node holds three of the six stories when the rendezvous goes away.
    env = {**TIMEOUTS, **run_for("30s"), "HUSKIES_MAX_CONCURRENT": "3"}
    a = await nodes.start("outage-a", ns_a, url, env, proxied=True)
    b = await nodes.start("outage-b", ns_b, url, env, proxied=True)
    kc = str(storyjob_crd.kubeconfig_path)
    ids = [f"{910 + i}_outage" for i in range(6)]
    async with pipeline(url) as doc, kube(kc, ns_a) as ka, kube(kc, ns_b) as kb, JobLog([ka, kb]) as jobs:
        await present(doc, a, b)
        stages = StageLog(doc)
        await hand_out(doc, jobs, a, b, ids[:3], ids[3:], stage="4_merge")
        running = {r.uid for r in jobs.active()}
        assert len(running) == 6, describe_jobs(jobs.active())

        await asyncio.to_thread(server.stop)  # graceful: the database keeps everything
        await asyncio.sleep(2 * CLAIM_TIMEOUT + 1)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(wait_http, healthz)

        await eventually(lambda: all(doc.story(s).stage == "5_done" for s in ids), 120,  # type: ignore[union-attr]
                         what="every story done")
        deleted = jobs.deleted_while_running()
        assert not deleted, f"jobs deleted while they ran: {describe_jobs(deleted)}"
        await eventually(lambda: all(jobs.jobs[uid].state == "Complete" for uid in running), 10,
                         what="every job that ran during the outage completed")
        sjs = await storyjobs(ka, kb)
        assert sorted(sj["spec"]["storyId"] for sj in sjs) == sorted(ids), (
            f"a story was claimed again after the outage: {describe(sjs)}")
        succeeded = collections.Counter(sj["spec"]["storyId"] for sj in sjs if phase(sj) == "Succeeded")
        assert succeeded == {sid: 1 for sid in ids}, describe(sjs)
        assert {sid: stages.history[sid] for sid in ids} == {sid: ["4_merge", "5_done"] for sid in ids}
        stages.close()


# ---------------------------------------------------------------------------------- partitions
async def _late_completion_round(doc: PipelineDoc, stages: StageLog, jobs: JobLog, kubes: dict[str, Kube],
                                 story: str, stale: Node, taker: Node) -> None:
    """``stale`` claims ``story`` and is cut off; ``taker`` takes it over and finishes it; heal."""
    assert stale.proxy is not None and taker.proxy is not None
    # Only the stale node sees the story appear, so it is the one that claims it.
    await taker.proxy.cut()
    doc.add_story(story, stage="3_qa")
    await flush(doc)
    await eventually(lambda: doc.story(story).claimed_by == stale.node_id, 60,  # type: ignore[union-attr]
                     what=f"{stale.name} claims {story}")
    stale_jobs = await eventually(lambda: [r for r in jobs.of_story(story) if r.namespace == stale.namespace],
                                  30, what=f"the job of {stale.name}")
    await taker.proxy.heal()
    await presence_changed(doc, taker.node_id)
    await stale.proxy.cut()
    cut_at = time.monotonic()

    await eventually(lambda: doc.story(story).stage == "5_done", 120,  # type: ignore[union-attr]
                     what=f"{taker.name} took {story} over and finished it")
    assert time.monotonic() - cut_at >= CLAIM_TIMEOUT, "a live claim was taken over before the claim timeout"
    # The stale run ends while its node is still cut off (kwok ends it, or its node stops it),
    # and the stale node gets a moment to act on that end before the link heals.
    stale_job = stale_jobs[0]
    await eventually(lambda: stale_job.finished or stale_job.gone or stale_job.deleting, 60,
                     what=f"the stale run of {stale.name} ended")
    await within(_storyjob_final(kubes[stale.namespace], story), 8)

    await stale.proxy.heal()
    await presence_changed(doc, stale.node_id)
    await holds(lambda: doc.story(story).stage == "5_done", 3,  # type: ignore[union-attr]
                f"the stale completion of {stale.name} overwrote the taker's result: "
                f"history {stages.history.get(story)}")
    assert stages.history[story] == ["3_qa", "4_merge", "5_done"], (
        f"{story}: a stage went back or was advanced twice: {stages.history[story]}")

    # Each stage the story left was left by a run of that stage that succeeded: the taker's.
    taker_sjs = [sj for sj in await kubes[taker.namespace].list_storyjobs("") if sj["spec"]["storyId"] == story]
    done = collections.Counter(sj["spec"]["stage"] for sj in taker_sjs if phase(sj) == "Succeeded")
    assert done == {"3_qa": 1, "4_merge": 1}, describe(taker_sjs)
    completed = collections.Counter(r.stage for r in jobs.of_story(story)
                                    if r.namespace == taker.namespace and r.state == "Complete")
    assert completed == {"3_qa": 1, "4_merge": 1}, describe_jobs(jobs.of_story(story))


async def _storyjob_final(k: Kube, story: str) -> None:
    async def final() -> bool:
        return any(phase(sj) in FINAL for sj in await k.list_storyjobs("") if sj["spec"]["storyId"] == story)
    await eventually(final, 30, what=f"a final StoryJob of {story}")


async def test_partitioned_holders_late_completion_never_wins(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane) -> None:
    """Findings 2 and 3 of issue 10 (I1, I2): a cut-off node's late completion never moves a story back.

    Yjs settles concurrent writes of one key by client id, so on today's code the stale write wins
    when the stale node's client id is the higher one. The test plays the scenario twice with the
    roles swapped, so one of the two rounds has the stale node on the winning side of that tie-break.
    """
    ns_a, ns_b = namespace_factory(), namespace_factory()
    env = {**TIMEOUTS, **run_for("10s")}
    a = await nodes.start("late-a", ns_a, rendezvous, env, proxied=True)
    b = await nodes.start("late-b", ns_b, rendezvous, env, proxied=True)
    kc = str(storyjob_crd.kubeconfig_path)
    async with pipeline(rendezvous) as doc, kube(kc, ns_a) as ka, kube(kc, ns_b) as kb, \
            JobLog([ka, kb]) as jobs:
        await present(doc, a, b)
        stages = StageLog(doc)
        kubes = {ns_a: ka, ns_b: kb}
        await _late_completion_round(doc, stages, jobs, kubes, "920_late", stale=a, taker=b)
        await _late_completion_round(doc, stages, jobs, kubes, "921_late", stale=b, taker=a)
        stages.close()


async def test_partitioned_holder_stops_its_stale_run_after_reconnecting(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane) -> None:
    """I3/I6 at the operator's level: past the claim timeout the story moves on, the stale Job goes."""
    ns_a, ns_b = namespace_factory(), namespace_factory()
    a = await nodes.start("cutoff-a", ns_a, rendezvous, {**TIMEOUTS, **run_for("1h")}, proxied=True)
    kc = str(storyjob_crd.kubeconfig_path)
    async with pipeline(rendezvous) as doc, kube(kc, ns_a) as ka, kube(kc, ns_b) as kb, \
            JobLog([ka, kb]) as jobs:
        await present(doc, a)
        stages = StageLog(doc)
        doc.add_story("930_cutoff", stage="4_merge")
        await flush(doc)
        await eventually(lambda: doc.story("930_cutoff").claimed_by == a.node_id, 60,  # type: ignore[union-attr]
                         what="claimed by the first node")
        stale = (await eventually(lambda: jobs.of_story("930_cutoff"), 30, what="the first node's job"))[0]
        b = await nodes.start("cutoff-b", ns_b, rendezvous, {**TIMEOUTS, **run_for("1s")})
        await present(doc, b)
        assert a.proxy is not None
        await a.proxy.cut()
        cut_at = time.monotonic()
        await eventually(lambda: doc.story("930_cutoff").stage == "5_done", 90,  # type: ignore[union-attr]
                         what="the story taken over and finished")
        assert time.monotonic() - cut_at >= CLAIM_TIMEOUT, "a live claim was taken over before the claim timeout"
        await a.proxy.heal()
        await presence_changed(doc, a.node_id)
        await eventually(lambda: stale.gone or stale.deleting, 30, what="the stale job deleted")
        assert stale.state != "Complete", "the stale run was left to finish"
        await holds(lambda: doc.story("930_cutoff").stage == "5_done", 3,  # type: ignore[union-attr]
                    "the stale node moved the story")
        assert stages.history["930_cutoff"] == ["4_merge", "5_done"]
        sjs = await storyjobs(ka, kb)
        ok = [sj for sj in sjs if phase(sj) == "Succeeded"]
        assert [sj["spec"]["node"] for sj in ok] == [b.node_id], describe(sjs)
        stages.close()


# ---------------------------------------------------------------------------------- clock skew
_FAKETIME_LIBS = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1",
                  "/usr/local/lib/faketime/libfaketimeMT.so.1")


@pytest.fixture(scope="session")
def libfaketime() -> str:
    """libfaketime (apt package ``faketime``, installed by ``make faketime``)."""
    for pattern in _FAKETIME_LIBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    if os.environ.get("CI"):
        pytest.fail("libfaketime is missing: run tools/faketime/install.sh (make faketime)")
    pytest.skip("libfaketime is not installed (tools/faketime/install.sh)")


def skewed(lib: str, offset: str) -> dict[str, str]:
    """Environment that shifts a process's wall clock by ``offset`` (e.g. ``-15m``), not its monotonic clock."""
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def check_skew(env: dict[str, str], expected: float) -> None:
    """The preloaded clock moves Python's time.time by ``expected`` seconds and leaves time.monotonic alone."""
    mono_before, wall = time.monotonic(), time.time()
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time(), time.monotonic())"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=30)
    mono_after = time.monotonic()
    child_wall, child_mono = (float(x) for x in out.stdout.split())
    assert abs(child_wall - wall - expected) < 30, f"time.time is off by {child_wall - wall:.0f}s, not {expected}"
    assert mono_before <= child_mono <= mono_after, "libfaketime moved time.monotonic as well"


async def test_clock_skew_of_fifteen_minutes_takes_no_live_claim_over(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane,
        libfaketime: str, tmp_path: Path) -> None:
    """Finding 4 of issue 10 (I5): liveness never compares two machines' clocks."""
    slow_env, fast_env = skewed(libfaketime, "-15m"), skewed(libfaketime, "+15m")
    check_skew(slow_env, -900)
    check_skew(fast_env, 900)
    # A clock 15 minutes slow sees the test PKI's certificates as not valid yet.
    kc = str(storyjob_crd.kubeconfig_path)
    skewed_kc = insecure_kubeconfig(kc, tmp_path / "skewed.kubeconfig")
    ns_s, ns_f = namespace_factory(), namespace_factory()
    env = {**TIMEOUTS, **run_for("15s"), "HUSKIES_MAX_CONCURRENT": "3"}
    slow = await nodes.start("slow", ns_s, rendezvous, {**env, **slow_env}, proxied=True, kubeconfig=skewed_kc)
    fast = await nodes.start("fast", ns_f, rendezvous, {**env, **fast_env}, proxied=True, kubeconfig=skewed_kc)
    first = [f"{940 + i}_skew" for i in range(3)]
    second = [f"{943 + i}_skew" for i in range(3)]
    async with pipeline(rendezvous) as doc, kube(kc, ns_s) as ks, kube(kc, ns_f) as kf, \
            JobLog([ks, kf]) as jobs:
        await present(doc, slow, fast)
        stages = StageLog(doc)
        holders: dict[str, str] = {}

        def note_holders(_: object) -> None:
            for sid in first + second:
                story = doc.story(sid)
                if story is not None and story.claimed_by and sid not in holders:
                    holders[sid] = story.claimed_by

        remove = doc.add_listener(note_holders)
        # Hand the stories out without races: the slow node gets the first three (the fast one
        # does not see them appear), the fast node the next three (the slow one is full).
        await hand_out(doc, jobs, slow, fast, first, second, stage="4_merge")
        await eventually(lambda: all(doc.story(s).stage == "5_done" for s in first + second),  # type: ignore
                         120, what="every story done")
        remove()
        sjs = await storyjobs(ks, kf)
        deleted = jobs.deleted_while_running()
        assert not deleted, f"jobs deleted while they ran: {describe_jobs(deleted)}; runs: {describe(sjs)}"
        runs = collections.Counter((sj["spec"]["storyId"], sj["spec"]["node"]) for sj in sjs)
        assert runs == {(s, holders[s]): 1 for s in first + second}, f"a claim was taken over: {describe(sjs)}"
        assert holders == {**{s: slow.node_id for s in first}, **{s: fast.node_id for s in second}}, holders
        assert all(phase(sj) == "Succeeded" for sj in sjs), describe(sjs)
        assert all(stages.history[s] == ["4_merge", "5_done"] for s in first + second), stages.history
        stages.close()


# ---------------------------------------------------------------------------------- two installs
async def test_two_releases_in_one_namespace_run_only_their_own_stories(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane,
        log_dir: Path, procs: list[Proc]) -> None:
    """Finding 5 of issue 10: names and selectors are unique per install."""
    other, other_url = start_rendezvous(log_dir)
    procs.append(other)
    ns = namespace_factory()
    env = {**run_for("8s")}
    alpha = await nodes.start("alpha", ns, rendezvous, {**env, "HUSKIES_INSTANCE": "alpha"})
    beta = await nodes.start("beta", ns, other_url, {**env, "HUSKIES_INSTANCE": "beta"})
    ids = [f"{950 + i}_same" for i in range(4)]
    dropped = ids[-1]
    kc = str(storyjob_crd.kubeconfig_path)
    async with pipeline(rendezvous) as doc_a, pipeline(other_url) as doc_b, kube(kc, ns) as k, \
            JobLog([k]) as jobs:
        await present(doc_a, alpha)
        await present(doc_b, beta)
        for doc in (doc_a, doc_b):
            doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
            await flush(doc)
        await eventually(lambda: all(d.story(s).claimed_by for d in (doc_a, doc_b) for s in ids),  # type: ignore
                         60, what="every story claimed in both pipelines")
        # Each install runs every story as its own Job (same story ids, so only the install in the
        # names keeps them apart).
        def installs(story: str) -> set[str]:
            return {r.labels.get("app.kubernetes.io/instance", "") for r in jobs.of_story(story)}

        await within(eventually(lambda: all(installs(s) == {"alpha", "beta"} for s in ids), 30), 35)
        assert all(installs(s) == {"alpha", "beta"} for s in ids), (
            f"the installs share Jobs (same names): {describe_jobs(list(jobs.jobs.values()))}; "
            f"runs: {describe(await k.list_storyjobs(''))}")
        # Beta's project drops a story while both installs run it: beta stops its own run only.
        doc_b.remove_story(dropped)
        await flush(doc_b)
        await eventually(lambda: all(doc_a.story(s).stage == "5_done" for s in ids)  # type: ignore[union-attr]
                         and all(doc_b.story(s).stage == "5_done" for s in ids[:-1]),  # type: ignore[union-attr]
                         120, what="every story done in both pipelines")

        assert set(doc_a.nodes) == {alpha.node_id} and set(doc_b.nodes) == {beta.node_id}
        sjs = await k.list_storyjobs("")
        by_install: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for sj in sjs:
            install = sj["metadata"]["labels"].get("app.kubernetes.io/instance", "")
            assert sj["spec"]["node"] == {"alpha": alpha.node_id, "beta": beta.node_id}.get(install), describe([sj])
            if phase(sj) == "Succeeded":
                by_install[install][sj["spec"]["storyId"]] += 1
        assert by_install == {"alpha": {s: 1 for s in ids}, "beta": {s: 1 for s in ids[:-1]}}, (
            f"one install settled or ran the other's runs: {describe(sjs)}")
        def per_install() -> collections.Counter[tuple[str | None, str, str]]:
            return collections.Counter((r.labels.get("app.kubernetes.io/instance"), r.story, r.state)
                                       for r in jobs.jobs.values())

        # The StoryJobs say every run succeeded; the Job poll may lag a moment behind the Job controller.
        await eventually(lambda: all(per_install()[("alpha", s, "Complete")] == 1 for s in ids)
                         and all(per_install()[("beta", s, "Complete")] == 1 for s in ids[:-1]), 30,
                         what="the Job poll saw every run's Job complete")
        assert all(per_install()[("alpha", s, "Complete")] == 1 for s in ids), describe_jobs(list(jobs.jobs.values()))
        assert all(per_install()[("beta", s, "Complete")] == 1 for s in ids[:-1]), describe_jobs(
            list(jobs.jobs.values()))
        deleted = [r for r in jobs.deleted_while_running() if r.labels.get("app.kubernetes.io/instance") == "alpha"]
        assert not deleted, f"beta deleted alpha's job: {describe_jobs(deleted)}"


# ---------------------------------------------------------------------------------- downtime
async def test_operator_down_longer_than_the_job_ttl_does_not_rerun_the_claim(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane) -> None:
    """Finding 6 of issue 10: a finished claim's outcome survives the Job's TTL and a restart."""
    ns = namespace_factory()
    # The operator sets no ttlSecondsAfterFinished any more (build.ttl_seconds_after_finished was
    # removed): the finished Job lives until its StoryJob is cleaned up. The test still stays down
    # for longer than the TTL the old default gave a test Job.
    ttl = 2
    env = {**run_for("4s")}
    op = await nodes.start("phoenix-ttl", ns, rendezvous, env)
    kc = str(storyjob_crd.kubeconfig_path)
    async with pipeline(rendezvous) as doc, kube(kc, ns) as k, JobLog([k], interval=0.1) as jobs:
        await present(doc, op)
        stages = StageLog(doc)
        doc.add_story("960_ttl", stage="4_merge")
        await flush(doc)
        first = (await eventually(lambda: jobs.of_story("960_ttl"), 60, what="the job"))[0]
        op.proc.kill()  # down hard: nothing recorded on the way out
        # The Job finishes and the TTL controller collects it while nobody watches (an operator
        # may also keep finished Jobs with no TTL: then the TTL just passes).
        await eventually(lambda: first.finished, 30, what="the job finished")
        if first.ttl is not None:
            await eventually(lambda: first.gone or first.deleting, 30, what="the finished job collected (TTL)")
        await asyncio.sleep(ttl + 1)
        op.proc.start()  # same node identity (ConfigMap) and replica id
        await eventually(lambda: doc.story("960_ttl").stage == "5_done", 90,  # type: ignore[union-attr]
                         what="the story done after the restart")
        await asyncio.sleep(2)  # a rerun's Job would be listed by now
        await jobs.poll()
        assert [r.uid for r in jobs.of_story("960_ttl")] == [first.uid], (
            f"the finished claim ran again: {describe_jobs(jobs.of_story('960_ttl'))}")
        sjs = await k.list_storyjobs("")
        assert [phase(sj) for sj in sjs] == ["Succeeded"], describe(sjs)
        assert stages.history["960_ttl"] == ["4_merge", "5_done"]
        stages.close()


# ---------------------------------------------------------------------------------- deadline kills
async def test_deadline_kill_counts_and_blocks_after_max_retries(
        nodes: Nodes, namespace_factory: Callable[[], str], rendezvous: str, storyjob_crd: ControlPlane) -> None:
    """Finding 7 of issue 10: a run killed at activeDeadlineSeconds is a counted failure.

    A real runner exits with its TERMINATED code (19) when the deadline's SIGTERM reaches it; the
    kwok stages give the pod that exit code when the Job controller deletes it.
    """
    ns = namespace_factory()
    env = {**run_for("1h", **{"test.huskies/exit-code-on-delete": "19"}),
           "HUSKIES_BUILD_ACTIVE_DEADLINE_SECONDS": "3", "HUSKIES_MAX_RETRIES": "2"}
    op = await nodes.start("overrun", ns, rendezvous, env)
    kc = str(storyjob_crd.kubeconfig_path)
    async with pipeline(rendezvous) as doc, kube(kc, ns) as k:
        await present(doc, op)
        doc.add_story("970_overrun", stage="2_current")
        await flush(doc)

        async def runs() -> list[dict[str, Any]]:
            return await k.list_storyjobs("")

        def blocked() -> bool:
            return bool(doc.story("970_overrun").blocked)  # type: ignore[union-attr]

        async def summary() -> str:
            story = doc.story("970_overrun")
            return f"story {story}; runs: {describe(await runs())}"

        try:
            await eventually(blocked, 90, what="the story blocked after two deadline kills")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await summary()}") from None
        story = doc.story("970_overrun")
        assert story is not None
        assert story.retry_count == 2 and story.stage == "2_current", await summary()
        assert "deadline" in story.last_error.lower(), story.last_error
        await asyncio.sleep(3)  # a few resyncs: a blocked story is not claimed again
        sjs = await runs()
        assert len(sjs) == 2 and all(phase(sj) == "Failed" for sj in sjs), describe(sjs)
