"""Benchmark of the rendezvous sync on loopback.

    .venv/bin/python bench/bench_sync.py [--stories 10000] [--updates 300] [--syncs 5]

Starts its own rendezvous subprocess (``huskies-agent rendezvous``) on 127.0.0.1 with a
temporary database, and reports:

* the machine (CPU model, cores, Python, pycrdt and websockets versions);
* seeding: one client pushes N stories and waits for the server's confirmation;
* initial sync of a fresh client holding nothing: N stories through the real server
  (connect + handshake + STEP1/STEP2 + apply + parse), several runs, with and without
  permessage-deflate, and the share of it spent applying and parsing locally;
* update round trip client -> server -> client (p50/p99) over a few hundred updates;
* server restart with N stories (process start until /healthz answers);
* RSS of a client process holding N stories (measured in a subprocess via VmRSS).

Target for the operator: initial sync of 10k stories under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.rendezvous import start_rendezvous  # noqa: E402

from huskies_agent.pipeline import stages  # noqa: E402
from huskies_agent.pipeline.document import Changes, PipelineDoc  # noqa: E402
from huskies_agent.sync.client import RendezvousClient  # noqa: E402
from machine import cpu_model  # noqa: E402  (bench/machine.py)

TARGET_INITIAL_SYNC_S = 1.0


def machine() -> list[str]:
    cpu = cpu_model()
    return [
        f"CPU:        {cpu}",
        f"cores:      {os.cpu_count()}",
        f"Python:     {platform.python_version()} ({platform.python_implementation()}, {platform.machine()})",
        f"pycrdt:     {version('pycrdt')}",
        f"websockets: {version('websockets')}",
    ]


def story_entries(count: int) -> list[dict[str, object]]:
    """Stories shaped like a real pipeline: names, dependencies, a third of them claimed."""
    active = (stages.CURRENT, stages.QA, stages.MERGE)
    entries: list[dict[str, object]] = []
    for index in range(count):
        entry: dict[str, object] = {
            "story_id": f"story-{index:05d}",
            "name": f"Story number {index}: make the thing do more things",
            "stage": stages.ALL_STAGES[index % len(stages.ALL_STAGES)],
            "depends_on": [f"story-{index - 1:05d}"] if index % 5 else [],
        }
        if index % 3 == 0:
            entry["stage"] = active[index % 3]
            entry["claim"] = {"node": f"node-{index % 7}", "epoch": 1 + index % 4, "at": 1_700_000_000.0 + index}
        entries.append(entry)
    return entries


def client(doc: PipelineDoc, url: str, compression: bool = True) -> RendezvousClient:
    return RendezvousClient(doc, url, reconnect_min=0.05, reconnect_max=0.5, compression=compression)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def seed(url: str, count: int) -> None:
    doc = PipelineDoc()
    async with client(doc, url) as writer:
        await writer.wait_synced(30)
        started = time.perf_counter()
        entries = story_entries(count)
        built = pushed = 0.0
        for start in range(0, count, 10_000):  # in parts: one update stays under the rendezvous' update limit
            part = time.perf_counter()
            doc.add_stories(entries[start:start + 10_000])
            built += time.perf_counter() - part
            part = time.perf_counter()
            if not await writer.confirm(60):
                raise SystemExit("seeding was not confirmed")
            pushed += time.perf_counter() - part
        built, done = started + built, started + built + pushed
        state = len(doc.encode_update())
    print(f"seed {count} stories: build {ms(built - started)}, push + confirm {ms(done - built)}"
          f"  (document state {state / 2**20:.2f} MiB)")


async def initial_syncs(url: str, count: int, runs: int, compression: bool) -> float:
    wall: list[float] = []
    received = 0
    for _ in range(runs):
        doc = PipelineDoc()
        started = time.perf_counter()
        async with client(doc, url, compression=compression) as reader:
            await reader.wait_synced(60)
            wall.append(time.perf_counter() - started)
            received = reader.stats.bytes_in
            if len(doc) != count:
                raise SystemExit(f"synced {len(doc)} stories, expected {count}")
        doc.close()
    median = statistics.median(wall)
    verdict = "OK" if median < TARGET_INITIAL_SYNC_S else "OVER TARGET"
    label = "permessage-deflate" if compression else "no compression"
    print(f"initial sync of {count} stories, fresh client, {label} ({runs} runs, {received / 2**20:.2f} MiB):")
    print(f"    task start -> synced   min {ms(min(wall))}  median {ms(median)}  max {ms(max(wall))}"
          f"   [{verdict}: target < {TARGET_INITIAL_SYNC_S:g} s]")
    return median


def local_apply(count: int) -> None:
    """The client's CPU share of a sync: apply the full state and parse every story, no network."""
    source = PipelineDoc()
    source.add_stories(story_entries(count))
    update = source.encode_update()
    timings = []
    for _ in range(3):
        replica = PipelineDoc()
        started = time.perf_counter()
        replica.apply_remote(update)
        timings.append(time.perf_counter() - started)
    print(f"    of which local apply_remote of the state + parsing {count} stories (no network):"
          f" median {ms(statistics.median(timings))}")


async def round_trips(url: str, count: int, updates: int) -> None:
    a_doc, b_doc = PipelineDoc(), PipelineDoc()
    async with client(a_doc, url) as a, client(b_doc, url) as b:
        await a.wait_synced(60)
        await b.wait_synced(60)
        loop = asyncio.get_running_loop()
        pending: dict[str, tuple[str, asyncio.Future[float]]] = {}

        def on_change(changes: Changes) -> None:
            for story_id in changes.stories:
                waiting = pending.get(story_id)
                story = b_doc.story(story_id)
                if waiting and story is not None and story.name == waiting[0] and not waiting[1].done():
                    waiting[1].set_result(time.perf_counter())

        b_doc.add_listener(on_change)
        latencies: list[float] = []
        for index in range(updates):
            story_id = f"story-{(index * 37) % count:05d}"
            name = f"round trip {index}"
            future: asyncio.Future[float] = loop.create_future()
            pending[story_id] = (name, future)
            started = time.perf_counter()
            a_doc.put_raw(story_id, name=name)
            arrived = await asyncio.wait_for(future, 10)
            latencies.append(arrived - started)
            del pending[story_id]
    print(f"update round trip client -> server -> client ({updates} updates, {count}-story document):")
    print(f"    p50 {ms(percentile(latencies, 0.5))}  p99 {ms(percentile(latencies, 0.99))}"
          f"  max {ms(max(latencies))}  mean {ms(statistics.fmean(latencies))}")


def client_rss(url: str, count: int) -> None:
    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", url, "--stories", str(count)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    baseline, synced, peak = (result[key] / 1024 for key in ("baseline_kib", "synced_kib", "peak_kib"))
    print(f"client process RSS: {baseline:.1f} MiB after imports, {synced:.1f} MiB holding "
          f"{result['stories']} stories (+{synced - baseline:.1f} MiB; peak {peak:.1f} MiB)")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _rss_child(url: str, count: int) -> None:
    baseline = _status_kib("VmRSS")
    doc = PipelineDoc()
    async with client(doc, url) as reader:
        await reader.wait_synced(60)
    print(json.dumps({
        "baseline_kib": baseline, "synced_kib": _status_kib("VmRSS"), "peak_kib": _status_kib("VmHWM"),
        "stories": len(doc),
    }))


async def bench(url: str, args: argparse.Namespace) -> None:
    await seed(url, args.stories)
    await initial_syncs(url, args.stories, args.syncs, compression=True)
    await initial_syncs(url, args.stories, args.syncs, compression=False)
    local_apply(args.stories)
    await round_trips(url, args.stories, args.updates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--rss-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        asyncio.run(_rss_child(args.rss_child, args.stories))
        return 0
    print("\n".join(machine()))
    print()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, start_rendezvous(Path(tmp)) as server:
        asyncio.run(bench(server.url, args))
        started = time.perf_counter()
        server.restart()
        print(f"server restart with {args.stories} stories (SIGTERM + compaction, new process -> /healthz): "
              f"{ms(time.perf_counter() - started)}")
        client_rss(server.url, args.stories)
    return 0


if __name__ == "__main__":
    sys.exit(main())
