"""Does work spread across build nodes in proportion to their capacity, without lost races?

    .venv/bin/python bench/bench_spread.py [--stories 120] [--run-seconds 0.5] [--load 0.8]
                                           [--scenario 4,2 ...] [--presence-interval 0.1]

N build nodes on one real rendezvous process (a new one per scenario); each node is the real Engine
with a real PipelineDoc and sync client and its OWN IN-MEMORY Kubernetes API (tests/helpers/fakekube.py):
this benchmark measures the claim protocol and the mesh, not an API server. A feeder client
adds stories to 2_current as a Poisson stream at ``--load`` of the fleet's throughput; a
driver per node runs each Job for ``--run-seconds`` and then completes it, so every story
goes 2_current -> 3_qa -> 4_merge -> 5_done, one claimed run per stage.

Printed per scenario (default: 2 nodes equal and 2:1, 5 nodes equal and 2:1), per node: its
share of the capacity, its share of the completed runs and whether that is within +-20 % of
its capacity share (relative: |run share / capacity share - 1| <= 0.2), Jobs created, Jobs
wasted (created, then deleted because the claim was lost to another node); overall the wasted
percentage (target < 2 %), and the safety checks: no (story, stage) ran to completion twice,
none is missing, no stage moved backwards as a separate client saw it.

Time is compressed: runs last a second instead of tens of minutes, so presence (which carries
each node's free slots, what the ranking weighs) is written every ``--presence-interval``
seconds instead of 30 s. The engine's spread delay (1 s per rank) is not compressed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "operator"))
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.rendezvous import fast_client, start_rendezvous  # noqa: E402

from fleet import ErrorCounter, Ledger, Node, StageWatch, quiet_logging  # noqa: E402  (bench/fleet.py)
from huskies_agent.pipeline import stages  # noqa: E402
from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

TOLERANCE = 0.20
WASTE_TARGET = 0.02
DEFAULT_SCENARIOS = ("3,3", "4,2", "2,2,2,2,2", "4,4,2,2,2")


@dataclass
class Result:
    capacities: list[int]
    runs: int
    wasted: int
    created: int
    within: bool
    safe: bool


def parse_scenario(text: str) -> list[int]:
    caps = [int(part) for part in text.split(",") if part.strip()]
    if len(caps) < 2 or min(caps) < 1:
        raise argparse.ArgumentTypeError(f"a scenario is two or more capacities >= 1, e.g. 4,2: {text!r}")
    return caps


async def scenario(url: str, caps: list[int], args: argparse.Namespace, counter: ErrorCounter) -> Result:
    errors_before = counter.count
    total = sum(caps)
    nodes = [Node(f"node-{i + 1}", cap, url, presence_interval=args.presence_interval)
             for i, cap in enumerate(caps)]
    ledger = Ledger()
    feeder_doc = PipelineDoc()
    watch = StageWatch(feeder_doc)
    # Throughput of the fleet in stories/s (each story is three runs), and the stream at --load of it.
    rate = args.load * total / (len(stages.ACTIVE_STAGES) * args.run_seconds)
    story_ids = [f"{i + 1}_bench" for i in range(args.stories)]
    rng = random.Random(args.seed)
    print(f"\n== {len(caps)} nodes, capacities {':'.join(map(str, caps))} (total {total}); {args.stories} stories "
          f"x 3 stages, runs of {args.run_seconds:g} s, arrivals {rate:.2f} stories/s (load {args.load:g}), "
          f"presence every {args.presence_interval:g} s")
    async with fast_client(feeder_doc, url) as feeder:
        await feeder.wait_synced(30)
        for node in nodes:
            await node.start(ledger, run_seconds=args.run_seconds)
        started = time.perf_counter()
        try:
            for sid in story_ids:
                feeder_doc.add_story(sid, stage=stages.CURRENT, name=f"bench story {sid}")
                await asyncio.sleep(rng.expovariate(rate))
            fed = time.perf_counter() - started
            await watch.wait_done(story_ids, args.timeout)
            wall = time.perf_counter() - started
            await asyncio.sleep(0.5)  # stray deletes and records land
        finally:
            for node in nodes:
                await node.stop()
    feeder_doc.close()

    by_node = ledger.by_node()
    runs = sum(by_node.values())
    created = sum(n.jobs_created for n in nodes)
    wasted = sum(n.jobs_lost for n in nodes)
    within_all = True
    print(f"{'node':8} {'cap':>4} {'cap share':>10} {'runs':>6} {'run share':>10} {'ratio':>6} {'within 20%':>10}"
          f" {'jobs created':>13} {'wasted':>7} {'deleted':>8}")
    for node in nodes:
        cap_share = node.capacity / total
        run_share = by_node[node.node_id] / runs if runs else 0.0
        ratio = run_share / cap_share
        within = abs(ratio - 1) <= TOLERANCE
        within_all &= within
        print(f"{node.node_id:8} {node.capacity:>4} {cap_share:>9.1%} {by_node[node.node_id]:>6} {run_share:>9.1%}"
              f" {ratio:>6.2f} {'yes' if within else 'NO':>10} {node.jobs_created:>13} {node.jobs_lost:>7}"
              f" {node.jobs_deleted:>8}")
    twice = ledger.twice()
    missing = ledger.missing(story_ids)
    done = watch.done(story_ids)
    waste = wasted / created if created else 0.0
    print(f"runs completed {runs} of {3 * len(story_ids)}; Jobs created {created}; wasted on lost races {wasted} "
          f"({waste:.2%}) [target < {WASTE_TARGET:.0%}: {'OK' if waste < WASTE_TARGET else 'MISSED'}]; "
          f"every node within +-20% of its capacity share: {'yes' if within_all else 'NO'}")
    errors = counter.count - errors_before
    safe = not twice and not missing and not watch.backwards and done == len(story_ids) and errors == 0
    print(f"(story, stage) run to completion twice: {len(twice)}; not run: {len(missing)}; stage moves backwards "
          f"seen by a separate client: {len(watch.backwards)}; stories done {done}/{len(story_ids)}; engine errors "
          f"logged: {errors}")
    for key, ran in list(twice.items())[:5]:
        print(f"    ran twice: {key} by {ran}")
    print(f"wall {wall:.1f} s (stream fed in {fed:.1f} s)")
    return Result(caps, runs, wasted, created, within_all, safe)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=parse_scenario, action="append",
                        help=f"node capacities, e.g. 4,2 (repeatable; default {' '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--stories", type=int, default=120, help="stories per scenario (each runs 3 stages)")
    parser.add_argument("--run-seconds", type=float, default=0.5, help="simulated run time of every Job")
    parser.add_argument("--load", type=float, default=0.8, help="arrival rate as a fraction of fleet throughput")
    parser.add_argument("--presence-interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a scenario to drain")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--verbose", action="store_true", help="engine logs at INFO")
    args = parser.parse_args()
    counter = quiet_logging(args.verbose)
    print(describe())
    print("build nodes: real Engine + PipelineDoc + sync client each, one real rendezvous process (a new one "
          "per scenario); each node has "
          "its own IN-MEMORY Kubernetes API (tests/helpers/fakekube.py): this measures the claim protocol and the "
          "mesh, not the API server. All nodes share this one Python process.")
    results = []
    for caps in args.scenario or [parse_scenario(s) for s in DEFAULT_SCENARIOS]:
        # A fresh rendezvous (and document) per scenario: no presence left over from the last one.
        with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp, start_rendezvous(Path(tmp)) as server:
            results.append(asyncio.run(scenario(server.url, caps, args, counter)))
    print("\nsummary:")
    for r in results:
        waste = r.wasted / r.created if r.created else 0.0
        print(f"    capacities {':'.join(map(str, r.capacities)):10} runs {r.runs:4}  within +-20%: "
              f"{'yes' if r.within else 'NO ':3}  wasted {waste:6.2%}  safety checks: {'OK' if r.safe else 'FAILED'}")
    return 0 if all(r.safe for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
