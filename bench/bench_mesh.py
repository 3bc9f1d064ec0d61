"""Twenty build nodes on one rendezvous with a 10,000-story document (issue 17).

    .venv/bin/python bench/bench_mesh.py [--nodes 20] [--stories 10000] [--burst 500]
                                         [--capacity 10] [--run-seconds 1.0] [--updates 50]

One real rendezvous process; each node is the real Engine with a real PipelineDoc and sync
client and its OWN IN-MEMORY Kubernetes API (tests/helpers/fakekube.py): this measures the
claim protocol and the mesh, not an API server. All nodes share this one Python process, so
whatever the nodes do at the same moment is done one after another here (a real fleet has a
process, and usually a machine, per node).

Printed, with the machine:
  * every node's initial sync of the document (connect until synced; and until its engine is
    active, adoption included). Nodes join one after another, each while the earlier ones are
    connected;
  * the rendezvous process' CPU time and RSS (/proc/<pid>) after seeding, after the joins, idle
    with every node connected, after the burst and after the fan-out;
  * a burst of B stories entering 2_current at once: time until every story's first Job exists
    and until every story is done (3 stages, runs of --run-seconds), each node's share, Jobs
    wasted on lost races, and a check that no (story, stage) ran to completion twice (a lost
    race's Job that outlives ``--run-seconds`` before its engine sees the loss counts as a second
    run: the driver finishes it as a runner would; the document is still advanced once, since
    every outcome write is conditioned on the winning claim);
  * fan-out: one story update written by a separate client until each of the N nodes has it,
    p50/p99 over every (update, node) and of the slowest node per update.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "operator"))
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.rendezvous import RendezvousProcess, fast_client, start_rendezvous  # noqa: E402

from fleet import ErrorCounter, Ledger, Node, ProcStats, StageWatch, ms, pct, quiet_logging  # noqa: E402
from huskies_agent.pipeline import stages  # noqa: E402
from huskies_agent.pipeline.document import Changes, PipelineDoc  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

#: Stages of the seeded stories: a pipeline's history, nothing a node would claim.
SEED_STAGES = (stages.DONE, stages.ARCHIVED, stages.BACKLOG, stages.DONE, stages.ARCHIVED)


class ServerMeter:
    """The rendezvous process' CPU and memory between phases."""

    def __init__(self, server: RendezvousProcess) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid
        self.last = ProcStats.read(self.pid)
        self.last_at = time.perf_counter()

    def phase(self, what: str) -> None:
        now, stats = time.perf_counter(), ProcStats.read(self.pid)
        cpu, wall = stats.cpu_seconds - self.last.cpu_seconds, now - self.last_at
        print(f"    rendezvous after {what}: CPU {cpu:.2f} s over {wall:.1f} s ({cpu / wall:.1%} of a core), "
              f"total CPU {stats.cpu_seconds:.2f} s, RSS {stats.rss_mib:.0f} MiB (peak {stats.peak_rss_mib:.0f} MiB)")
        self.last, self.last_at = stats, now


async def seed(url: str, count: int) -> None:
    doc = PipelineDoc()
    async with fast_client(doc, url) as writer:
        await writer.wait_synced(60)
        started = time.perf_counter()
        doc.add_stories({"story_id": f"{i + 1}_history", "stage": SEED_STAGES[i % len(SEED_STAGES)],
                         "name": f"Story number {i + 1}: make the thing do more things"} for i in range(count))
        if not await writer.confirm(120):
            raise SystemExit("seeding was not confirmed")
        size = len(doc.encode_update())
    doc.close()
    print(f"seeded {count} stories (none claimable) in {time.perf_counter() - started:.2f} s; "
          f"document {size / 2**20:.2f} MiB")


async def join(nodes: list[Node], ledger: Ledger, args: argparse.Namespace) -> None:
    for node in nodes:
        await node.start(ledger, run_seconds=args.run_seconds)
    syncs = [n.sync_seconds for n in nodes]
    actives = [n.active_seconds for n in nodes]
    print(f"initial sync of each node ({args.stories} stories; joins one after another):")
    for n in nodes:
        print(f"    {n.node_id:8} synced {ms(n.sync_seconds):>10}  engine active {ms(n.active_seconds):>10}")
    print(f"    synced: min {ms(min(syncs))}, median {ms(statistics.median(syncs))}, max {ms(max(syncs))}; "
          f"engine active: median {ms(statistics.median(actives))}, max {ms(max(actives))}")


async def burst(url: str, nodes: list[Node], ledger: Ledger, args: argparse.Namespace,
                counter: ErrorCounter) -> bool:
    """The burst; False when a (story, stage) ran twice or not at all, or the engines logged errors."""
    doc = PipelineDoc()
    watch = StageWatch(doc)
    ids = [f"{args.stories + i + 1}_burst" for i in range(args.burst)]
    errors_before = counter.count
    async with fast_client(doc, url) as feeder:
        await feeder.wait_synced(60)
        started, cpu_started = time.perf_counter(), time.process_time()
        doc.add_stories({"story_id": sid, "stage": stages.CURRENT, "name": f"burst story {sid}"} for sid in ids)
        all_done = await watch.wait_done(ids, args.timeout)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await asyncio.sleep(0.5)  # stray deletes and records land
    doc.close()
    first = [ledger.first_job[(sid, stages.CURRENT)] - started for sid in ids
             if (sid, stages.CURRENT) in ledger.first_job]
    by_node = ledger.by_node()
    runs = sum(by_node.values())
    created = sum(n.jobs_created for n in nodes)
    wasted = sum(n.jobs_lost for n in nodes)
    total = args.capacity * len(nodes)
    print(f"burst of {args.burst} stories into 2_current ({len(nodes)} nodes x {args.capacity} slots = {total}; "
          f"runs of {args.run_seconds:g} s, 3 stages each):")
    if first:
        print(f"    first-stage Job exists for {len(first)}/{len(ids)} stories: 50% after {ms(pct(first, 0.5))}, "
              f"all after {ms(max(first))} (as the drivers saw them, polling every 20 ms)")
    print(f"    all {len(ids)} stories done: {'yes' if all_done else 'NO'} after {wall:.2f} s; "
          f"{runs} runs completed")
    print(f"    this process (all {len(nodes)} nodes, their in-memory APIs and drivers) used {cpu:.1f} s of CPU in "
          f"those {wall:.1f} s ({cpu / wall:.0%} of a core): above ~90% the nodes wait for each other here")
    shares = sorted(by_node[n.node_id] for n in nodes)
    print(f"    runs per node: min {shares[0]}, median {statistics.median(shares):g}, max {shares[-1]} "
          f"(even share {runs / len(nodes):.0f})")
    print(f"    Jobs created {created}; wasted on lost races {wasted} ({wasted / max(1, created):.2%})")
    twice, missing = ledger.twice(), ledger.missing(ids)
    errors = counter.count - errors_before
    print(f"    (story, stage) run to completion twice: {len(twice)}; not run: {len(missing)}; stage moves backwards: "
          f"{len(watch.backwards)}; engine errors logged: {errors}")
    for key, ran in list(twice.items())[:5]:
        print(f"        ran twice: {key} by {ran}")
    return not twice and not missing and not watch.backwards and all_done and errors == 0


async def fanout(url: str, nodes: list[Node], args: argparse.Namespace) -> None:
    target = {"sid": "", "name": ""}
    arrived: dict[str, float] = {}
    everyone = asyncio.Event()

    def listener(node: Node) -> Callable[[], None]:
        def on_changes(changes: Changes) -> None:
            if target["sid"] in changes.stories and node.node_id not in arrived:
                story = node.doc.story(target["sid"])
                if story is not None and story.name == target["name"]:
                    arrived[node.node_id] = time.perf_counter()
                    if len(arrived) == len(nodes):
                        everyone.set()
        return node.doc.add_listener(on_changes)

    removers = [listener(n) for n in nodes]
    each: list[float] = []
    slowest: list[float] = []
    doc = PipelineDoc()
    async with fast_client(doc, url) as writer:
        await writer.wait_synced(60)
        for index in range(args.updates):
            sid = f"{1 + (index * 37) % args.stories}_history"
            arrived.clear()
            everyone.clear()
            target.update(sid=sid, name=f"fan-out {index}")
            started = time.perf_counter()
            doc.put_raw(sid, name=target["name"])
            await asyncio.wait_for(everyone.wait(), 30)
            latencies = [t - started for t in arrived.values()]
            each.extend(latencies)
            slowest.append(max(latencies))
            await asyncio.sleep(0.05)
    doc.close()
    for remove in removers:
        remove()
    print(f"fan-out of one update to all {len(nodes)} nodes ({args.updates} updates, {args.stories}-story document):")
    print(f"    each node:    p50 {ms(pct(each, 0.5))}  p99 {ms(pct(each, 0.99))}  max {ms(max(each))}")
    print(f"    slowest node: p50 {ms(pct(slowest, 0.5))}  p99 {ms(pct(slowest, 0.99))}  max {ms(max(slowest))}")


async def run(server: RendezvousProcess, args: argparse.Namespace, counter: ErrorCounter) -> bool:
    meter = ServerMeter(server)
    await seed(server.url, args.stories)
    meter.phase("seeding")
    ledger = Ledger()
    nodes = [Node(f"node-{i + 1:02d}", args.capacity, server.url, presence_interval=args.presence_interval,
                  resync_interval=args.resync_interval) for i in range(args.nodes)]
    try:
        await join(nodes, ledger, args)
        meter.phase(f"{args.nodes} joins")
        await asyncio.sleep(args.idle_seconds)
        meter.phase(f"{args.idle_seconds:g} s idle with {args.nodes} nodes (presence every "
                    f"{args.presence_interval:g} s each)")
        safe = await burst(server.url, nodes, ledger, args, counter)
        meter.phase("the burst")
        await fanout(server.url, nodes, args)
        meter.phase("the fan-out")
    finally:
        for node in nodes:
            await node.stop()
    print(f"engine errors logged in all: {counter.count}" + "".join(f"\n    {e}" for e in counter.first))
    return safe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--stories", type=int, default=10_000, help="stories in the document before the burst")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--capacity", type=int, default=10, help="slots per node")
    parser.add_argument("--run-seconds", type=float, default=1.0)
    parser.add_argument("--updates", type=int, default=50, help="updates for the fan-out latency")
    parser.add_argument("--presence-interval", type=float, default=1.0)
    parser.add_argument("--resync-interval", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for the burst to drain")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    counter = quiet_logging(args.verbose)
    print(describe())
    print(f"{args.nodes} build nodes: real Engine + PipelineDoc + sync client each, one real rendezvous process; "
          "each node has its own IN-MEMORY Kubernetes API (tests/helpers/fakekube.py): this measures the claim "
          "protocol and the mesh, not the API server. All nodes share this one Python process.")
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp, start_rendezvous(Path(tmp)) as server:
        safe = asyncio.run(run(server, args, counter))
    return 0 if safe and counter.count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
