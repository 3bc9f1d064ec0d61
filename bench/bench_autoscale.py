"""Autoscaling benchmark: the operator with a real autoscaler (Karpenter's kwok provider).

    .venv/bin/python bench/bench_autoscale.py [--stories 10]
        [--consolidate-after 30s] [--registration-delay 0s] [--run-for 5s] [--keep-logs DIR]

Same setup as the autoscaling tier's test (tests/autoscale/env.py): a control plane on loopback whose only
node is a 1-cpu system node, a NodePool of 8-cpu Karpenter-kwok nodes (limit 40 cpu, consolidation
WhenEmpty), Karpenter-kwok, a rendezvous and one operator; build pods request 2 cpu / 1Gi and run
``--run-for``. Karpenter-kwok is built first when missing (~5 min cold).

Prints, with the machine it ran on:
  * cold burst: N stories enter 4_merge with no build node -> each story's pod Running
    (p50/max), nodes added, first node created, all nodes Ready, all stories 5_done;
  * warm burst: N more stories right after, the nodes still there -> pod Running (p50/max),
    nodes added (expected 0);
  * scale-down: last build pod ended -> each node gone, and all gone (consolidateAfter included).
Times are measured from the benchmark's write of the stories (before the rendezvous' confirmation)
to the first poll (every 0.2 s) that shows the state. ``--registration-delay`` models instance boot
time (KWOKNodeClass nodeRegistrationDelay); the default 0s measures only the software path.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))

from tests.autoscale.env import AutoscaleConfig, AutoscaleEnv  # noqa: E402
from tests.autoscale.karpenter import karpenter_version  # noqa: E402
from tests.autoscale.observer import Observer, PodTimes  # noqa: E402

from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from huskies_agent.sync.client import RendezvousClient  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)


async def wait(check: Callable[[], bool], timeout: float, what: str, env: AutoscaleEnv) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        env.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def done(doc: PipelineDoc, ids: list[str]) -> bool:
    return all((s := doc.story(sid)) is not None and s.stage == "5_done" for sid in ids)


def running_times(pods: list[PodTimes], ids: list[str], t0: float) -> list[float]:
    wanted = set(ids)
    return sorted(p.running - t0 for p in pods if p.story_id in wanted and p.running is not None)


async def burst(env: AutoscaleEnv, client: RendezvousClient, doc: PipelineDoc, obs: Observer,
                ids: list[str]) -> tuple[float, float]:
    """Put ``ids`` in 4_merge; wait until all are 5_done. Returns (t0, t_done)."""
    doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
    t0 = time.monotonic()
    if not await client.confirm(10):
        raise RuntimeError("the rendezvous did not confirm the stories")
    await wait(lambda: done(doc, ids), 300, "every story in 5_done", env)
    return t0, time.monotonic()


def p50_max(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {describe()}")
    cfg = AutoscaleConfig(run_for=args.run_for, consolidate_after=args.consolidate_after,
                          registration_delay="" if args.registration_delay in ("", "0s", "0") else
                          args.registration_delay)
    run_dir = Path(tempfile.mkdtemp(prefix="huskies-bench-autoscale-"))
    try:
        with AutoscaleEnv(run_dir, cfg) as env:
            print(f"karpenter-kwok {karpenter_version(env.karpenter_dir or Path())}; start-up: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in env.timings.items()))
            print(f"setup: {args.stories} stories per burst, build pods {cfg.build_requests}, run-for {cfg.run_for}, "
                  f"NodePool c-{cfg.instance_cpu[0]}x nodes, limit {cfg.limit_cpu} cpu, consolidation WhenEmpty after "
                  f"{cfg.consolidate_after}, node registration delay {cfg.registration_delay or '0s'}")
            try:
                await run(env, args)
            finally:
                if args.keep_logs:
                    env.keep_logs(Path(args.keep_logs))
                    print(f"logs copied to {args.keep_logs}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def run(env: AutoscaleEnv, args: argparse.Namespace) -> None:
    doc = PipelineDoc()
    async with RendezvousClient(doc, env.url) as client:
        await client.wait_synced(timeout=30)
        await wait(lambda: bool(doc.nodes), 30, "the operator's presence", env)
        assert not env.karpenter_nodes(), "build nodes exist before the burst"
        with Observer(env.cp, env.namespace) as obs:
            # 1. cold: no build node
            cold = [f"{1000 + i}_cold" for i in range(args.stories)]
            t0, t_done = await burst(env, client, doc, obs, cold)
            nodes = obs.node_list()
            cold_run = running_times(obs.pod_list(), cold, t0)
            print(f"cold burst (scale-up from zero): story in 4_merge -> pod Running: {p50_max(cold_run)}")
            print(f"  nodes added: {len(nodes)} ({', '.join(sorted({n.instance_type for n in nodes}))}); "
                  f"first node created {min(n.seen for n in nodes) - t0:.2f} s, all Ready "
                  f"{max(n.ready or 0 for n in nodes) - t0:.2f} s; all stories 5_done {t_done - t0:.2f} s")
            # 2. warm: the same nodes, still there
            before = {n.name for n in obs.live_nodes()}
            warm = [f"{2000 + i}_warm" for i in range(args.stories)]
            t1, t1_done = await burst(env, client, doc, obs, warm)
            warm_run = running_times(obs.pod_list(), warm, t1)
            added = [n for n in obs.node_list() if n.name not in before and n.seen >= t1]
            print(f"warm burst (nodes already present): story in 4_merge -> pod Running: {p50_max(warm_run)}")
            print(f"  nodes added: {len(added)}; all stories 5_done {t1_done - t1:.2f} s")
            # 3. scale-down
            await wait(lambda: not env.karpenter_nodes() and not env.nodeclaims(), 600, "the nodes removed", env)
            await asyncio.sleep(0.5)
            pods = obs.pod_list()
            last_end = max(p.finished for p in pods if p.finished is not None)
            gone = sorted(n.gone - last_end for n in obs.node_list() if n.gone is not None)
            print(f"scale-down (last build pod ended -> node gone; consolidateAfter {env.cfg.consolidate_after} "
                  f"included): first {gone[0]:.2f} s, all {len(gone)} gone {gone[-1]:.2f} s")
            if obs.errors:
                print(f"(observer: {obs.errors} failed polls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=10)
    parser.add_argument("--consolidate-after", default="30s",
                        help="NodePool consolidateAfter; must outlast the gap between the two bursts")
    parser.add_argument("--registration-delay", default="0s", help="KWOKNodeClass nodeRegistrationDelay")
    parser.add_argument("--run-for", default="5s", help="how long each fake build runs")
    parser.add_argument("--keep-logs", default="", help="copy all logs to this directory")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
