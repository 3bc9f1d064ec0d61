"""Warm capacity benchmark: story -> build pod Running with warm slots versus from zero nodes,
with a real autoscaler (Karpenter's kwok provider).

    .venv/bin/python bench/bench_warm.py [--reps 4] [--warm-slots 2]
        [--registration-delay 0s] [--run-for 3s] [--keep-logs DIR]

The setup is the autoscaling tier's (tests/autoscale/env.py: a loopback control plane whose only
node is a 1-cpu system node, a NodePool, Karpenter-kwok, a rendezvous and one operator), sized so
that a node holds exactly one build pod: build pods request 1 cpu / 1Gi (plus the publisher's
100m / 256Mi), NodePool nodes are c-2x (2 cpu, of which Karpenter-kwok reserves 100m). So every
warm slot is a node of its own and a story's pod must preempt a placeholder to start.

Two runs, each in a fresh setup:
  * cold (``build.warm_slots`` 0): ``--reps`` times, with no build node left, one story enters
    4_merge -> its pod Running (a NodePool node is created for it);
  * warm (``build.warm_slots`` N, the chart's PriorityClass: value -1, preemptionPolicy Never):
    the pool's placeholders bring N nodes up; then ``--reps`` times one story -> pod Running
    (preempting a placeholder), waiting each time until the pool has refilled and Karpenter has
    removed every other build node; then a burst of N stories at once, and of N + 2 (the two beyond
    the warm slots wait for a scale-up).
Times run from the benchmark's write of the story to the first 0.2 s poll that shows the pod
Running. ``--registration-delay`` models instance boot (KWOKNodeClass nodeRegistrationDelay).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))

from tests.autoscale.env import AutoscaleConfig, AutoscaleEnv  # noqa: E402
from tests.autoscale.karpenter import karpenter_version  # noqa: E402
from tests.autoscale.observer import Observer  # noqa: E402

from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from huskies_agent.sync.client import RendezvousClient  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

PRIORITY_CLASS = "huskies-warm"


async def wait(check: Callable[[], bool], timeout: float, what: str, env: AutoscaleEnv) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        env.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def config(args: argparse.Namespace, warm_slots: int) -> AutoscaleConfig:
    env = {"HUSKIES_BUILD_WARM_SLOTS": str(warm_slots)}
    objects: tuple[tuple[str, dict[str, Any]], ...] = ()
    if warm_slots:
        env["HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME"] = PRIORITY_CLASS
        objects = (("/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": PRIORITY_CLASS},
            "value": -1, "preemptionPolicy": "Never", "globalDefault": False}),)
    return AutoscaleConfig(
        build_requests={"cpu": "1", "memory": "1Gi"}, instance_cpu=("2",), limit_cpu="40",
        run_for=args.run_for, consolidate_after=args.consolidate_after, max_concurrent=20,
        registration_delay="" if args.registration_delay in ("", "0s", "0") else args.registration_delay,
        operator_env=env, extra_objects=objects)


def placeholder_nodes(env: AutoscaleEnv) -> list[str]:
    """Nodes of the live placeholders that have one."""
    items = env.cp.client.json(
        "GET", f"/api/v1/namespaces/{env.namespace}/pods?labelSelector=app.kubernetes.io/component%3Dwarm-slot")
    return [p["spec"]["nodeName"] for p in items["items"]
            if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")]


async def pool_at_rest(env: AutoscaleEnv, n: int) -> None:
    """Every placeholder on a node, and no other build node left (so a story must preempt)."""
    await wait(lambda: len(placeholder_nodes(env)) == n and len(env.karpenter_nodes()) == n, 300,
               f"{n} placeholders on {n} nodes and no other build node", env)


class Story:
    """Adds stories and measures story -> pod Running from the write."""

    def __init__(self, env: AutoscaleEnv, client: RendezvousClient, doc: PipelineDoc, obs: Observer) -> None:
        self.env, self.client, self.doc, self.obs = env, client, doc, obs
        self.n = 0
        self.nodes: list[str] = []
        self.t0 = 0.0

    async def run(self, count: int) -> list[float]:
        ids = [f"{3000 + self.n + i}_story" for i in range(count)]
        self.n += count
        self.doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
        t0 = time.monotonic()
        if not await self.client.confirm(10):
            raise RuntimeError("the rendezvous did not confirm the stories")

        def running() -> list[float]:
            return sorted(p.running - t0 for p in self.obs.pod_list() if p.story_id in ids and p.running)

        await wait(lambda: len(running()) == count, 300, f"{count} pods Running", self.env)
        self.nodes = [p.node for p in self.obs.pod_list() if p.story_id in ids]
        self.t0 = t0
        await wait(lambda: all((s := self.doc.story(i)) is not None and s.stage == "5_done" for i in ids), 300,
                   "the stories done", self.env)
        return running()


def fmt(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s "
            f"(n={len(values)})")


async def cold(args: argparse.Namespace, env: AutoscaleEnv) -> None:
    doc = PipelineDoc()
    async with RendezvousClient(doc, env.url) as client:
        await client.wait_synced(timeout=30)
        await wait(lambda: bool(doc.nodes), 30, "the operator's presence", env)
        with Observer(env.cp, env.namespace) as obs:
            story = Story(env, client, doc, obs)
            times: list[float] = []
            for _ in range(args.reps):
                await wait(lambda: not env.karpenter_nodes(), 300, "no build node", env)
                times += await story.run(1)
            print(f"cold (no build node, build.warm_slots 0): story -> pod Running {fmt(times)}")


async def warm(args: argparse.Namespace, env: AutoscaleEnv) -> None:
    n = args.warm_slots
    doc = PipelineDoc()
    async with RendezvousClient(doc, env.url) as client:
        await client.wait_synced(timeout=30)
        t0 = time.monotonic()
        await pool_at_rest(env, n)
        print(f"warm pool ready ({n} placeholders on {len(env.karpenter_nodes())} NodePool nodes) "
              f"{time.monotonic() - t0:.2f} s after the operator connected")
        await wait(lambda: any(p.extra.get("warm") == n for p in doc.nodes.values()), 60, "presence: warm", env)
        mine = next(p for p in doc.nodes.values() if p.extra.get("warm") == n)
        print(f"  presence (as a peer reads it): capacity {mine.capacity}, warm {mine.extra.get('warm')}, "
              f"can_scale {mine.extra.get('can_scale')}")
        with Observer(env.cp, env.namespace) as obs:
            story = Story(env, client, doc, obs)
            times: list[float] = []
            refill: list[float] = []
            preempted = 0
            for _ in range(args.reps):
                await pool_at_rest(env, n)
                held = set(placeholder_nodes(env))
                times += await story.run(1)
                preempted += sum(node in held for node in story.nodes)
                await wait(lambda: len(placeholder_nodes(env)) == n, 300, "the pool refilled", env)
                refill.append(time.monotonic() - story.t0)
            print(f"warm (build.warm_slots {n}): story -> pod Running {fmt(times)}; "
                  f"{preempted} of {args.reps} on a node a placeholder held")
            print(f"  pool refilled (placeholder on a new node) {fmt(refill)} after the story's write")
            await pool_at_rest(env, n)
            burst = await story.run(n)
            print(f"warm burst of {n} stories: pod Running {fmt(burst)}")
            await pool_at_rest(env, n)
            over = await story.run(n + 2)
            print(f"burst of {n + 2} stories with {n} warm slots and no other node: pod Running "
                  + ", ".join(f"{v:.2f}" for v in over) + " s")
            if obs.errors:
                print(f"(observer: {obs.errors} failed polls)")


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {describe()}")
    for name, slots, phase in (("cold", 0, cold), ("warm", args.warm_slots, warm)):
        cfg = config(args, slots)
        run_dir = Path(tempfile.mkdtemp(prefix=f"huskies-bench-warm-{name}-"))
        try:
            with AutoscaleEnv(run_dir, cfg) as env:
                if name == "cold":
                    print(f"karpenter-kwok {karpenter_version(env.karpenter_dir or Path())}; setup: build pods "
                          f"{cfg.build_requests} + publisher 100m/256Mi, run-for {cfg.run_for}, NodePool "
                          f"c-{cfg.instance_cpu[0]}x nodes (one build pod each), consolidation WhenEmpty after "
                          f"{cfg.consolidate_after}, node registration delay {cfg.registration_delay or '0s'}")
                try:
                    await phase(args, env)
                finally:
                    if args.keep_logs:
                        env.keep_logs(Path(args.keep_logs) / name)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--warm-slots", type=int, default=2)
    parser.add_argument("--consolidate-after", default="5s")
    parser.add_argument("--registration-delay", default="0s", help="KWOKNodeClass nodeRegistrationDelay")
    parser.add_argument("--run-for", default="3s", help="how long each fake build runs")
    parser.add_argument("--keep-logs", default="", help="copy all logs to this directory")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
