"""Real-run benchmark: image builds, the registry, and the real node's image pull and first run.

    .venv/bin/python bench/bench_realrun.py [--cold] [--pulls 3]

Prints, with the machine it ran on:
  * image build: cached (the key already built), and a rebuild after a change to the build context
    (a copy of the context with README.md touched, so the layer cache is used); with ``--cold`` also
    a build with empty image caches (base image from mmdebstrap; ~10 min on 2 cores);
  * image sizes (uncompressed and as OCI archives);
  * registry: start-up, push of each image (skopeo), helm package + push, helm pull from oci://;
  * the real node without a control plane (that part is in tests/realrun/test_node.py): a network
    namespace with containerd, then ``--pulls`` pulls of the runner image from the registry through
    the namespace's loopback forward (each into an empty containerd) and a first run of ``claude
    --version`` from it, read-only.
The story-to-first-model-request latency on the real node is bench/bench_realrun_story.py.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chart.chartlib import CHART, Helm, find_helm_binary  # noqa: E402
from tests.realrun.artifacts import (  # noqa: E402
    IMAGES_SCRIPT,
    NODE_SCRIPT,
    REGISTRY_SCRIPT,
    load_images,
    run_build_script,
)
from tests.realrun.node import RealNode  # noqa: E402
from tests.realrun.registry import Registry  # noqa: E402

from machine import describe  # noqa: E402  (bench/machine.py)

T = TypeVar("T")
CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "LICENSE", "operator", "tools/images"]


def timed(what: str, fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.monotonic()
    result = fn()
    seconds = time.monotonic() - t0
    print(f"  {what:<52} {seconds:8.1f} s", flush=True)
    return result, seconds


def context_copy(directory: Path) -> Path:
    """The build context and tools/images in a scratch tree, README touched: a new key."""
    for name in CONTEXT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, directory / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, directory / name)
    with (directory / "README.md").open("a") as readme:
        readme.write(f"\n<!-- bench {time.time()} -->\n")
    return directory / "tools" / "images" / "build.sh"


def bench_images(cold: bool) -> Path:
    print("image build")
    images_dir, _ = timed("cached (key already built)", lambda: run_build_script(IMAGES_SCRIPT, build=True))
    assert images_dir is not None
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        script = context_copy(Path(tmp))
        rebuilt, _ = timed("rebuild after a context change (layer cache)",
                           lambda: run_build_script(script, build=True))
        if rebuilt is not None:
            shutil.rmtree(rebuilt, ignore_errors=True)
    if cold:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as cache:
            env_before = os.environ.get("XDG_CACHE_HOME")
            os.environ["XDG_CACHE_HOME"] = cache
            try:
                timed("cold (empty image cache, base from mmdebstrap)",
                      lambda: run_build_script(IMAGES_SCRIPT, build=True))
            finally:
                if env_before is None:
                    os.environ.pop("XDG_CACHE_HOME")
                else:
                    os.environ["XDG_CACHE_HOME"] = env_before
    images = load_images(images_dir)
    print("image sizes")
    for image in (images.operator, images.runner):
        print(f"  {image.target:<10} {image.size:>8} uncompressed, {image.archive_bytes / 1e6:6.0f} MB OCI archive")
    return images_dir


def bench_registry(registry: Registry, images_dir: Path, work: Path) -> str:
    images = load_images(images_dir)
    print("registry")
    timed("start (crane registry serve)", registry.start)
    timed("push operator image (skopeo)",
          lambda: registry.push_archive(images.operator.archive, "huskies/huskies-agent", "0.1.0"))
    runner, _ = timed("push runner image (skopeo)",
                      lambda: registry.push_archive(images.runner.archive, "huskies/huskies-agent-runner", "0.1.0"))
    helm = Helm(find_helm_binary(), work / "helm")

    def package_and_push() -> None:
        helm.run("package", str(CHART), "--destination", str(work))
        helm.run("push", str(work / "huskies-agent-0.1.0.tgz"), f"oci://{registry.host}/charts", "--plain-http")

    timed("helm package + helm push", package_and_push)
    (work / "pulled").mkdir()
    timed("helm pull oci://", lambda: helm.run(
        "pull", f"oci://{registry.host}/charts/huskies-agent", "--version", "0.1.0", "--plain-http",
        "--destination", str(work / "pulled")))
    return runner


def bench_node(registry: Registry, runner_image: str, work: Path, pulls: int) -> None:
    node_bin = run_build_script(NODE_SCRIPT, build=True)
    assert node_bin is not None
    print("real node (containerd in a network namespace, no control plane)")
    pull_times: list[float] = []
    for i in range(pulls):
        node = RealNode(f"bench-{i}", node_bin, work / "unused.kubeconfig", work / f"node-{i}",
                        forward_ports=(registry.port,))
        try:
            t0 = time.monotonic()
            node.start_runtime()
            if i == 0:
                print(f"  {'network namespace + containerd start':<52} {time.monotonic() - t0:8.1f} s")
            _, seconds = timed(f"pull runner image from the registry ({i + 1}/{pulls})",
                               functools.partial(node.ctr, "images", "pull", "--plain-http", runner_image))
            pull_times.append(seconds)
            if i == 0:
                timed("first run: claude --version (read-only rootfs)", functools.partial(
                    node.ctr, "run", "--rm", "--read-only", runner_image, "bench", "claude", "--version"))
        finally:
            node.stop()
    print(f"  {'pull p50 / max':<52} {statistics.median(pull_times):8.1f} / {max(pull_times):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also build with empty image caches (~10 min)")
    parser.add_argument("--pulls", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    images_dir = bench_images(args.cold)
    crane_dir = run_build_script(REGISTRY_SCRIPT, build=True)
    assert crane_dir is not None
    with tempfile.TemporaryDirectory(prefix="bench-realrun-") as tmp:
        registry = Registry(crane_dir / "crane", Path(tmp) / "registry")
        try:
            runner = bench_registry(registry, images_dir, Path(tmp))
            bench_node(registry, runner, Path(tmp), args.pulls)
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
