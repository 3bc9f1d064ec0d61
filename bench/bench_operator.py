"""Operator benchmarks on the real control plane with a real rendezvous.

    .venv/bin/python bench/bench_operator.py [--stories 100] [--burst 1000] [--sizes 10000,100000]

Prints, with the machine it ran on and the load average at each step:
  * story enters 2_current -> its Job exists: p50/p99 over N stories, one at a time, and
    where the time goes, step by step (the operator's JSON log: engine/timing.py);
  * claim lost to another node -> Job deleted: p50/p99 over N stories, and its steps;
  * burst of B stories at once -> B Jobs exist: wall time, Jobs/s per second, the steps,
    and the CPU each process (operator, API server, etcd, controllers, kwok) used meanwhile;
  * for each document size: a fresh operator's initial sync, RSS and idle CPU (production
    settings, runtime dependencies only), and its story -> Job latency at that size.
Times are measured from the benchmark's own write (confirmed by the rendezvous) to the
Job's ADDED/DELETED watch event seen by the benchmark, so they include the sync hop,
the claim confirmation round trip and both API writes. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
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
from huskies_agent_dev.proc import Proc  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)
from oplog import CpuMeter, breakdown, load, log_records, pct, rss_mib  # noqa: E402  (bench/oplog.py)


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


async def latency(doc: PipelineDoc, client: RendezvousClient, jobs: JobWatch, op_log: Path, ids: list[str],
                  label: str) -> None:
    """One story at a time into 2_current; its Job's latency and where the time went."""
    written: dict[str, float] = {}
    for sid in ids:
        doc.add_story(sid, stage="2_current")
        written[sid] = time.monotonic()
        await client.confirm(5)
        await jobs.wait(lambda sid=sid: sid in jobs.added, 60)
    lat = [jobs.added[sid] - written[sid] for sid in ids]
    print(f"{label} ({len(lat)} stories, {load()}): p50 {pct(lat, 50) * 1000:.1f} ms, "
          f"p99 {pct(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
    await asyncio.sleep(0.5)  # the log lines are written as the Jobs are created
    print("\n".join(breakdown(ids, written, jobs.added, log_records(op_log, "started story"))))


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {describe()}; {load()}")
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
        env = {**FAST, "HUSKIES_MAX_CONCURRENT": str(max(1000, args.burst + args.stories)),
               "HUSKIES_RESYNC_INTERVAL_SECONDS": "30", "HUSKIES_PRESENCE_INTERVAL_SECONDS": "5",
               "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})}
        # INFO and JSON logs, as in production (DEBUG logs every watch event: CPU the
        # benchmark would otherwise measure); the JSON lines carry the start timings.
        op, port = start_operator("bench", kubeconfig=str(plane.kubeconfig_path), namespace=ns,
                                  rendezvous=url, log_dir=logs, env=env, log_level="INFO", log_format="json")
        procs.append(op)
        api = await connect(str(plane.kubeconfig_path))
        kube = TestKube(api, ns)
        doc = PipelineDoc()
        async with RendezvousClient(doc, url) as client, JobWatch(kube) as jobs:
            await client.wait_synced(timeout=30)
            for _ in range(300):
                if doc.nodes and metrics_text(port).count("huskies_leader 1"):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(args.warmup)
            # 1. story -> Job latency, one story at a time
            lat_ids = [f"{1000 + i}_latency" for i in range(args.stories)]
            await latency(doc, client, jobs, op.log_path, lat_ids, "story in 2_current -> Job exists")
            # 2. claim lost -> Job deleted
            doc.put_presence(NodePresence(node_id="bench-rival", last_seen=time.time() + 3600, alive=True))
            await client.confirm(5)
            lost: dict[str, float] = {}
            for sid in lat_ids:
                doc.claim(sid, "bench-rival", time.time())
                lost[sid] = time.monotonic()
                await client.confirm(5)
                await jobs.wait(lambda sid=sid: sid in jobs.deleted, 30)
            gone = [jobs.deleted[sid] - lost[sid] for sid in lat_ids]
            print(f"claim lost -> Job deleted ({len(gone)} stories, {load()}): p50 {pct(gone, 50) * 1000:.1f} ms, "
                  f"p99 {pct(gone, 99) * 1000:.1f} ms, max {max(gone) * 1000:.1f} ms")
            await asyncio.sleep(0.5)
            deletions = log_records(op.log_path, "deleted job")
            print("\n".join(breakdown(lat_ids, lost, jobs.deleted, deletions, ("write", "decided", "deleted", "seen"))
                            ).replace("claim decided", "loss decided").replace("Job create -> the", "Job deleted ->"))
            # 3. burst
            await burst(args, doc, client, jobs, plane, op, rv)
        # 4. documents of growing size: initial sync, RSS, idle CPU and reaction time of a fresh operator
        op.stop()
        doc2 = PipelineDoc()
        async with RendezvousClient(doc2, url) as client2, JobWatch(kube) as jobs2:
            await client2.wait_synced(timeout=120)
            for size in args.sizes:
                await big_document(args, size, doc2, client2, jobs2, plane, logs, ns, url, run_dir, procs)
        await kube.close()
    finally:
        for p in reversed(procs):
            p.stop()
        plane.stop()


async def burst(args: argparse.Namespace, doc: PipelineDoc, client: RendezvousClient, jobs: JobWatch,
                plane: ControlPlane, op: Proc, rv: Proc) -> None:
    pids = {name: p.pid for name, p in plane.processes.items() if p.pid is not None}
    pids.update({"operator": op.pid or 0, "rendezvous": rv.pid or 0, "benchmark": os.getpid()})
    meter = CpuMeter(pids)
    ids = [f"{5000 + i}_burst" for i in range(args.burst)]
    print(f"burst: {load()}")
    spy = None
    if args.py_spy:  # sample the operator's stacks during the burst (collapsed stacks, for flame graphs)
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(op.pid), "--format", "raw", "--rate", "200",
                                "--nonblocking", "--output", args.py_spy_output], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    meter.start()
    t0 = time.monotonic()
    doc.add_stories([{"story_id": sid, "stage": "2_current"} for sid in ids])
    await client.confirm(10)
    await jobs.wait(lambda: all(s in jobs.added for s in ids), 300)
    took = max(jobs.added[s] for s in ids) - t0
    used = meter.stop()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        print(f"  operator stacks during the burst: {args.py_spy_output}")
    print(f"burst of {args.burst} stories -> {args.burst} Jobs: {took:.2f} s ({args.burst / took:.0f} Jobs/s), "
          f"{load()}")
    per_second = [0] * (int(took) + 1)
    for sid in ids:
        per_second[int(jobs.added[sid] - t0)] += 1
    print("  Jobs per second: " + ", ".join(str(n) for n in per_second))
    print("  CPU seconds during the burst: " + ", ".join(
        f"{name} {sec:.1f}" for name, sec in sorted(used.items(), key=lambda item: -item[1]) if sec >= 0.05)
        + f" (of {took * (os.cpu_count() or 1):.1f} core-seconds)")
    await asyncio.sleep(1.0)
    logged = log_records(op.log_path, "started story")
    created = [times["job"] for sid, times in logged.items() if sid in jobs.added and "job" in times]
    if created:
        print(f"  the last Job create returned to the operator at {max(created) - t0:.2f} s "
              f"(the benchmark's watch saw the last one at {took:.2f} s)")
    print("\n".join(breakdown(ids, dict.fromkeys(ids, t0), jobs.added, logged)))


async def big_document(args: argparse.Namespace, size: int, doc2: PipelineDoc, client2: RendezvousClient,
                       jobs: JobWatch, plane: ControlPlane, logs: Path, ns: str, url: str, run_dir: Path,
                       procs: list[Proc]) -> None:
    have = sum(1 for s in doc2.stories if s.endswith("_archived_story"))
    if size > have:
        for start in range(have, size, 10_000):  # in parts: one update stays under the update limit
            doc2.add_stories([{"story_id": f"{100000 + i}_archived_story",
                               "stage": "6_archived" if i % 2 else "5_done",
                               "name": f"Story number {i} with a realistic title"}
                              for i in range(start, min(size, start + 10_000))])
            await client2.confirm(60)
    print(f"document: {len(doc2.stories)} stories ({size} archived), {len(doc2.encode_update()) / 1024:.0f} KiB "
          f"encoded; {load()}")
    # Production settings (no test-time shortcuts), INFO logs, and only the runtime
    # dependencies installed (as in the image): what a real install would use. One
    # instance name for every size: one node id, so no stopped node of ours ranks first.
    op2, port2 = start_operator(f"bench-big-{size}", kubeconfig=str(plane.kubeconfig_path), namespace=ns,
                                rendezvous=url, log_dir=logs, fast=False, log_level="INFO", log_format="json",
                                python=runtime_python(run_dir),
                                env={"HUSKIES_INSTANCE": "big", "HUSKIES_BUILD_REPO_URL": "git://127.0.0.1:1/r",
                                     "HUSKIES_MAX_CONCURRENT": "1000", "HUSKIES_SPREAD_DELAY_SECONDS": "0",
                                     "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"})})
    procs.append(op2)
    try:
        sync_s = None
        for _ in range(1200):
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
        meter = CpuMeter({"operator": op2.pid})
        meter.start()
        samples = []
        windows = max(1, int(args.idle // 10))
        for _ in range(windows):
            window = CpuMeter({"operator": op2.pid})
            window.start()
            await asyncio.sleep(args.idle / windows)
            samples.append(window.stop()["operator"] / (args.idle / windows) * 100)
        idle = meter.stop()["operator"] / args.idle * 100
        rss = rss_mib(op2.pid)
        sync_ms = sync_s * 1000 if sync_s else float("nan")
        print(f"operator with {size} archived stories: initial sync {sync_ms:.0f} ms, "
              f"RSS {rss:.0f} MiB, idle CPU {idle:.2f} % over {args.idle:.0f} s "
              f"(per window: {', '.join(f'{x:.1f}' for x in samples)} %); {load()}")
        ids = [f"{200000 + size + i}_react" for i in range(args.react)]
        await latency(doc2, client2, jobs, op2.log_path, ids, f"  {size} stories: story in 2_current -> Job exists")
    finally:
        op2.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--sizes", type=lambda text: [int(x) for x in text.split(",")], default=[10_000],
                        help="document sizes (archived stories) for the initial sync, RSS, idle CPU and "
                             "reaction time, e.g. 1000,10000,100000")
    parser.add_argument("--react", type=int, default=20, help="stories timed one at a time at each size")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the operator is up")
    parser.add_argument("--py-spy", metavar="PY_SPY", help="path of py-spy: sample the operator during the burst")
    parser.add_argument("--py-spy-output", default="/tmp/huskies-burst-stacks.txt")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait after the initial sync (kopf lists and replays every pod and Job)")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
