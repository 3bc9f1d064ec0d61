"""Operator benchmarks on the real control plane with a real rendezvous.

    .venv/bin/python bench/bench_operator.py [--stories 100] [--burst 300] [--big 10000]

Prints, with the machine it ran on:
  * story enters 2_current -> its Job exists: p50/p99 over N stories, one at a time;
  * claim lost to another node -> Job deleted: p50/p99 over N stories;
  * burst of B stories at once -> B Jobs exist: wall time;
  * a document of 10,000 stories: the operator's initial sync time, RSS and idle CPU.
Times are measured from the benchmark's own write (confirmed by the rendezvous) to the
Job's ADDED/DELETED watch event seen by the benchmark, so they include the sync hop,
the claim confirmation round trip and both API writes. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))

from tests.helpers.kube import TestKube  # noqa: E402

from huskies_agent.commands.crd_cmd import crd_text  # noqa: E402
from huskies_agent.k8s.api import connect  # noqa: E402
from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from huskies_agent.pipeline.model import NodePresence  # noqa: E402
from huskies_agent.sync.client import RendezvousClient  # noqa: E402
from huskies_agent_dev.devcluster import ControlPlane, find_testbin  # noqa: E402
from huskies_agent_dev.localrun import FAST, metrics_text, start_operator, start_rendezvous  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class JobWatch:
    """Records when each Job name was first ADDED and DELETED, as seen by a watch."""

    def __init__(self, kube: TestKube) -> None:
        self.kube = kube
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobWatch:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _run(self) -> None:
        path = f"/apis/batch/v1/namespaces/{self.kube.namespace}/jobs"
        while True:
            async for ev in self.kube.watch(path, {"timeoutSeconds": 300}):
                now = time.monotonic()
                meta = ev["object"]["metadata"]
                story = (meta.get("annotations") or {}).get("huskies.dev/story-id", meta["name"])
                if ev["type"] == "ADDED":
                    self.added.setdefault(story, now)
                elif ev["type"] == "DELETED":
                    self.deleted.setdefault(story, now)
                self.event.set()

    async def wait(self, pred: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            self.event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("benchmark condition not reached")
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except TimeoutError:
                pass


def runtime_python(run_dir: Path) -> str:
    """A venv with only the package's runtime dependencies (what the operator image holds)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huskies-agent" / "bench-venv"
    py = cache / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(cache)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", str(ROOT)], check=True)
    return str(py)


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {describe()}")
    run_dir = Path(tempfile.mkdtemp(prefix="huskies-bench-"))
    plane = ControlPlane(find_testbin(build=True), run_dir / "cluster", tier="cluster", nodes=4)
    plane.start()
    logs = run_dir / "logs"
    logs.mkdir()
    procs = []
    try:
        plane.client.create_if_missing("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                       __import__("yaml").safe_load(crd_text()))
        await asyncio.sleep(1)
        ns = "bench"
        plane.create_namespace(ns)
        rv, url = start_rendezvous(logs)
        procs.append(rv)
        env = {**FAST, "HUSKIES_MAX_CONCURRENT": "1000", "HUSKIES_RESYNC_INTERVAL_SECONDS": "30",
               "HUSKIES_PRESENCE_INTERVAL_SECONDS": "5",
               "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})}
        op, port = start_operator("bench", kubeconfig=str(plane.kubeconfig_path), namespace=ns,
                                  rendezvous=url, log_dir=logs, env=env)
        procs.append(op)
        api = await connect(str(plane.kubeconfig_path))
        kube = TestKube(api, ns)
        doc = PipelineDoc()
        async with RendezvousClient(doc, url) as client, JobWatch(kube) as jobs:
            await client.wait_synced(timeout=30)
            for _ in range(200):
                if doc.nodes:
                    break
                await asyncio.sleep(0.1)
            # 1. story -> Job latency, one story at a time
            lat = []
            for i in range(args.stories):
                sid = f"{1000 + i}_latency"
                doc.add_story(sid, stage="2_current")
                t0 = time.monotonic()
                await client.confirm(5)
                await jobs.wait(lambda sid=sid: sid in jobs.added, 30)
                lat.append(jobs.added[sid] - t0)
            print(f"story in 2_current -> Job exists ({len(lat)} stories): p50 {pct(lat, 50) * 1000:.1f} ms, "
                  f"p99 {pct(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
            # 2. claim lost -> Job deleted
            doc.put_presence(NodePresence(node_id="bench-rival", last_seen=time.time() + 3600, alive=True))
            await client.confirm(5)
            lost = []
            for i in range(args.stories):
                sid = f"{1000 + i}_latency"
                doc.claim(sid, "bench-rival", time.time())
                t0 = time.monotonic()
                await client.confirm(5)
                await jobs.wait(lambda sid=sid: sid in jobs.deleted, 30)
                lost.append(jobs.deleted[sid] - t0)
            print(f"claim lost -> Job deleted ({len(lost)} stories): p50 {pct(lost, 50) * 1000:.1f} ms, "
                  f"p99 {pct(lost, 99) * 1000:.1f} ms, max {max(lost) * 1000:.1f} ms")
            # 3. burst
            ids = [f"{5000 + i}_burst" for i in range(args.burst)]
            t0 = time.monotonic()
            doc.add_stories([{"story_id": sid, "stage": "2_current"} for sid in ids])
            await client.confirm(10)
            await jobs.wait(lambda: all(s in jobs.added for s in ids), 120)
            burst = max(jobs.added[s] for s in ids) - t0
            print(f"burst of {args.burst} stories -> {args.burst} Jobs: {burst:.2f} s")
        # 4. a big document: initial sync, RSS, idle CPU of a fresh operator
        op.stop()
        doc2 = PipelineDoc()
        async with RendezvousClient(doc2, url) as client2:
            await client2.wait_synced(timeout=30)
            done = [{"story_id": f"{100000 + i}_archived_story", "stage": "6_archived" if i % 2 else "5_done",
                     "name": f"Story number {i} with a realistic title"} for i in range(args.big)]
            doc2.add_stories(done)
            await client2.confirm(30)
        print(f"document: {len(doc2.stories)} stories, {len(doc2.encode_update()) / 1024:.0f} KiB encoded")
        # Production settings (no test-time shortcuts), INFO logs, and only the runtime
        # dependencies installed (as in the image): what a real install would use.
        op2, port2 = start_operator("bench-big", kubeconfig=str(plane.kubeconfig_path), namespace=ns,
                                    rendezvous=url, log_dir=logs, fast=False, log_level="INFO",
                                    python=runtime_python(run_dir),
                                    env={"HUSKIES_INSTANCE": "big", "HUSKIES_BUILD_REPO_URL": "git://127.0.0.1:1/r"})
        procs.append(op2)
        sync_s = None
        for _ in range(600):
            try:
                text = metrics_text(port2)
            except OSError:
                text = ""
            for line in text.splitlines():
                if line.startswith("huskies_rendezvous_initial_sync_seconds "):
                    sync_s = float(line.split()[1])
            if sync_s:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.settle)  # let start-up (kopf's first listing of pods and Jobs) settle
        assert op2.pid is not None
        pid = op2.pid
        samples = []
        rss1, cpu_prev = proc_stats(pid)
        cpu0 = cpu_prev
        windows = max(1, int(args.idle // 10))
        for _ in range(windows):
            await asyncio.sleep(args.idle / windows)
            rss1, cpu_now = proc_stats(pid)
            samples.append((cpu_now - cpu_prev) / (args.idle / windows) * 100)
            cpu_prev = cpu_now
        print(f"operator with {args.big} stories: initial sync {sync_s * 1000 if sync_s else float('nan'):.0f} ms, "
              f"RSS {rss1:.0f} MiB, idle CPU {(cpu_prev - cpu0) / args.idle * 100:.2f} % over {args.idle:.0f} s "
              f"(per window: {', '.join(f'{x:.1f}' for x in samples)} %)")
        await kube.close()
    finally:
        for p in reversed(procs):
            p.stop()
        plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=100)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to wait after the initial sync (kopf lists and replays every pod and Job)")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
