"""Real-run story latency: a story enters ``2_current`` → its build pod is Running on the real node →
the agent's first model request, over N stories, with the runner image already on the node.

    .venv/bin/python bench/bench_realrun_story.py [--stories 20]

Everything is what tests/realrun/test_story_on_node.py runs: the control plane, the registry with
both images and the chart published, the real node (kubelet + containerd + runc + CNI in a network
namespace), the chart installed from ``oci://`` with the operator on the node, a real rendezvous, the
git server, and the scripted Messages API. A warm-up story pulls the runner image first (its figure is
printed apart). Each measured story: the benchmark writes it into the document, waits for the first
request of the image's real Claude Code CLI at the model server (which holds its answer back), then
archives the story (the operator deletes the Job) and waits for the pod to be gone, so the stories
run one at a time on a quiet node.

Per step (wall clock, all on this host): the pod object (the operator's claim, StoryJob, Job, the Job
controller), scheduling, the kubelet's pick-up to the sandbox (volumes), the sandbox with its CNI
bridge (containerd's log), the ``clone`` container's start, its run (Python start, ``ls-remote``,
fetch, seed: its log's CRI timestamps), the kubelet noticing it ended, the ``agent`` and ``publish``
containers' start, the agent phase up to starting the CLI, and the CLI's start to its first request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chart.chartlib import Helm, find_helm_binary  # noqa: E402
from tests.e2e.harness import eventually, flush, pipeline  # noqa: E402
from tests.helpers.model_server import ModelServer, Reply, text  # noqa: E402
from tests.realrun.artifacts import (  # noqa: E402
    IMAGES_SCRIPT,
    NODE_SCRIPT,
    REGISTRY_SCRIPT,
    load_images,
    run_build_script,
)
from tests.realrun.node import RealNode, node_ready  # noqa: E402
from tests.realrun.registry import Registry  # noqa: E402
from tests.realrun.stack import publish, run_rendezvous  # noqa: E402
from tests.realrun.story import (  # noqa: E402
    GitServer,
    PodRecord,
    PodTimeline,
    install_chart,
    operator_ready,
    pod_log_lines,
    wait_until,
)

from huskies_agent_dev.devcluster import ControlPlane, find_testbin  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

NS = "bench-story"
NODE = "real-node-0"
STEPS = [
    ("pod created", "story", "pod_added"),
    ("scheduled", "pod_added", "scheduled"),
    ("kubelet pick-up, volumes", "scheduled", "sandbox_start"),
    ("sandbox + CNI", "sandbox_start", "sandbox_ready"),
    ("clone container start", "sandbox_ready", "clone_started"),
    ("clone: python + ls-remote", "clone_started", "clone_first_log"),
    ("clone: fetch + seed", "clone_first_log", "clone_last_log"),
    ("kubelet sees clone end", "clone_last_log", "agent_create"),
    ("agent container start", "agent_create", "agent_started"),
    ("agent: python + checkout", "agent_started", "agent_cli_start"),
    ("CLI start → first request", "agent_cli_start", "first_request"),
]


def parse_time(stamp: str) -> float:
    """RFC 3339 with up to nanoseconds (containerd, CRI logs) to a POSIX time."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", stamp)
    if not match:
        raise ValueError(stamp)
    zone = match.group(3) or "Z"
    base = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return base.timestamp() + float("0." + (match.group(2) or "0"))


@dataclass
class Run:
    story: str
    marks: dict[str, float] = field(default_factory=dict)

    def step(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return self.marks[end] - self.marks[start]
        return None


def containerd_marks(log: Path, pod: str) -> dict[str, float]:
    """When containerd started and finished the pod's sandbox and created/started its containers."""
    marks: dict[str, float] = {}
    sandbox = ""
    containers: dict[str, str] = {}  # container id -> name
    for line in log.read_text(errors="replace").splitlines():
        stamp = re.search(r'time="([^"]+)"', line)
        if not stamp:
            continue
        msg = line.replace('\\"', '"')
        at = parse_time(stamp.group(1))
        if "RunPodSandbox for" in msg and f"Name:{pod}," in msg:
            if "returns sandbox id" in msg:
                sandbox = re.search(r'returns sandbox id "([0-9a-f]+)"', msg).group(1)  # type: ignore[union-attr]
                marks["sandbox_ready"] = at
            else:
                marks.setdefault("sandbox_start", at)
        elif sandbox and f'CreateContainer within sandbox "{sandbox}"' in msg:
            name = re.search(r"ContainerMetadata\{Name:([a-z]+),", msg)
            if name and "returns container id" in msg:
                cid = re.search(r'returns container id "([0-9a-f]+)"', msg)
                if cid:
                    containers[cid.group(1)] = name.group(1)
            elif name:
                marks.setdefault(f"{name.group(1)}_create", at)
        elif "StartContainer for" in msg and "returns successfully" in msg:
            cid = re.search(r'StartContainer for "([0-9a-f]+)"', msg)
            if cid and cid.group(1) in containers:
                marks.setdefault(f"{containers[cid.group(1)]}_started", at)
    return marks


def log_marks(node: RealNode, pod: str) -> dict[str, float]:
    marks: dict[str, float] = {}
    clone = pod_log_lines(node, NS, pod, "clone")
    if clone:
        marks["clone_first_log"] = parse_time(clone[0][0])
        marks["clone_last_log"] = parse_time(clone[-1][0])
    for stamp, line in pod_log_lines(node, NS, pod, "agent"):
        if "starting the coder agent" in line:
            marks["agent_cli_start"] = parse_time(stamp)
            break
    return marks


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def job_of(custom: Any, sid: str) -> str:
    for sj in custom.list_namespaced_custom_object("huskies.dev", "v1alpha1", NS, "storyjobs")["items"]:
        if sj["spec"]["storyId"] == sid and (sj.get("status") or {}).get("jobName"):
            return str(sj["status"]["jobName"])
    return ""


async def one_story(doc: Any, sid: str, model: ModelServer, pods: PodTimeline, node: RealNode, custom: Any) -> Run:
    model.load([Reply([text("held back")], delay=600)])
    seen = len(model.requests)
    run = Run(sid)
    run.marks["story"] = time.time()
    doc.add_story(sid, stage="2_current", name=f"bench {sid}")
    await flush(doc)
    await eventually(lambda: len(model.requests) > seen, 300, interval=0.05, what=f"{sid}: first model request")
    run.marks["first_request"] = model.requests[seen].wall
    job = await eventually(lambda: job_of(custom, sid), 30, what=f"{sid}: its StoryJob's Job")
    record: PodRecord = await eventually(lambda: next(iter(pods.of_job(f"{job}-")), None), 30,
                                         what=f"{sid}: its pod")
    await eventually(lambda: record.running, 30, interval=0.05, what=f"{sid}: pod Running")
    run.marks.update(pod_added=record.added, scheduled=record.scheduled, running=record.running)
    run.marks.update(containerd_marks(node.log("containerd"), record.name))
    run.marks.update(log_marks(node, record.name))
    # Done with it: archive the story; the operator deletes the Job; wait until the pod is gone.
    doc.move(sid, "6_archived")
    await flush(doc)
    await eventually(lambda: record.gone, 200, interval=0.2, what=f"{sid}: pod removed")
    return run


def report(runs: list[Run]) -> None:
    def line(name: str, values: list[float]) -> str:
        if not values:
            return f"  {name:<34} n/a"
        return (f"  {name:<34} p50 {statistics.median(values):6.2f} s   p99 {quantile(values, 0.99):6.2f} s"
                f"   min {min(values):6.2f}   max {max(values):6.2f}   (n={len(values)})")

    print(f"story → build pod Running → first model request, {len(runs)} stories, image present")
    print(line("story → pod Running", [r.marks["running"] - r.marks["story"] for r in runs]))
    print(line("story → first model request", [r.marks["first_request"] - r.marks["story"] for r in runs]))
    print(line("pod Running → first model request", [r.marks["first_request"] - r.marks["running"] for r in runs]))
    print("per step (p50 of each step alone; steps overlap nowhere, they need not sum exactly):")
    for name, start, end in STEPS:
        print(line(name, [v for r in runs if (v := r.step(start, end)) is not None]))


@contextlib.contextmanager
def control_plane(work: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(find_testbin(build=True), work / "cluster", tier="cluster")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


async def bench(args: argparse.Namespace) -> None:
    from kubernetes import client, config

    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    images_dir = run_build_script(IMAGES_SCRIPT, build=True)
    crane_dir = run_build_script(REGISTRY_SCRIPT, build=True)
    node_bin = run_build_script(NODE_SCRIPT, build=True)
    assert images_dir and crane_dir and node_bin
    stories = [f"{200 + i}_bench_story" for i in range(args.stories + 1)]
    with tempfile.TemporaryDirectory(prefix="bench-story-") as tmp, control_plane(Path(tmp)) as plane:
        work = Path(tmp)
        registry = Registry(crane_dir / "crane", work / "registry")
        api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        node = RealNode(NODE, node_bin, plane.kubeconfig_path, work / "node", forward_ports=())
        try:
            registry.start()
            helm = Helm(find_helm_binary(), work / "helm")
            published = publish(load_images(images_dir), registry, helm, work / "chart")
            node.forward_ports = (registry.port,)
            node.start()
            node.wait_ready(lambda: _ready(core))
            with (run_rendezvous(work / "rendezvous") as rendezvous,
                  GitServer(work / "git", stories) as git_server, ModelServer() as model,
                  install_chart(helm, plane.kubeconfig_path, core, published, release="bench", namespace=NS,
                                rendezvous=rendezvous, git_server=git_server,
                                model_port=int(model.server_address[1]), node=node, workdir=work) as _install,
                  PodTimeline(core, NS) as pods):
                wait_until(lambda: operator_ready(core, NS), "operator Ready", 300)
                async with pipeline(rendezvous.url) as doc:
                    warm = await one_story(doc, stories[0], model, pods, node, custom)
                    print(f"warm-up story (runner image pulled from the registry): first model request after "
                          f"{warm.marks['first_request'] - warm.marks['story']:.2f} s", flush=True)
                    runs = []
                    for sid in stories[1:]:
                        runs.append(await one_story(doc, sid, model, pods, node, custom))
                        r = runs[-1]
                        print(f"  {sid}: Running {r.marks['running'] - r.marks['story']:.2f} s, first request "
                              f"{r.marks['first_request'] - r.marks['story']:.2f} s", flush=True)
            report(runs)
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        finally:
            node.stop()
            registry.stop()
            api.close()


def _ready(core: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        return node_ready(core.read_node(NODE).to_dict())
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=20)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
