"""The real-run tier's pieces as plain context managers and functions, for the pytest fixtures
(tests/realrun/conftest.py) and the benchmark (bench/bench_realrun_story.py) alike.

``publish``          both images and the packaged chart pushed to the registry, the way a user publishes;
``run_rendezvous``   a real rendezvous (``huskies-agent rendezvous``) on 127.0.0.1, stopped on exit.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from tests.chart.chartlib import CHART, Helm
from tests.realrun.artifacts import BuiltImages
from tests.realrun.registry import Registry

OPERATOR_REPOSITORY = "huskies/huskies-agent"
RUNNER_REPOSITORY = "huskies/huskies-agent-runner"
CHART_NAMESPACE = "charts"


@dataclass(frozen=True)
class Published:
    registry: Registry
    version: str  # the chart's version and appVersion: the images' tag
    operator_image: str  # <host>/<repo>:<tag>
    runner_image: str
    chart_url: str  # oci://<host>/charts/huskies-agent
    chart_digest: str

    @property
    def operator_repository(self) -> str:
        return self.operator_image.rsplit(":", 1)[0]

    @property
    def runner_repository(self) -> str:
        return self.runner_image.rsplit(":", 1)[0]


def publish(images: BuiltImages, registry: Registry, helm: Helm, out: Path) -> Published:
    """skopeo-copy both images and ``helm package`` + ``helm push`` the chart to ``registry``."""
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = str(chart_meta["appVersion"])
    assert version == str(chart_meta["version"]), "the images are tagged with the chart's appVersion"
    operator_image = registry.push_archive(images.operator.archive, OPERATOR_REPOSITORY, version)
    runner_image = registry.push_archive(images.runner.archive, RUNNER_REPOSITORY, version)

    out.mkdir(parents=True, exist_ok=True)
    helm.run("package", str(CHART), "--destination", str(out))
    package = out / f"{chart_meta['name']}-{chart_meta['version']}.tgz"
    assert package.is_file(), f"helm package made no {package.name}"
    pushed = helm.run("push", str(package), f"oci://{registry.host}/{CHART_NAMESPACE}", "--plain-http")
    digest = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", pushed.stdout + pushed.stderr)
    assert digest, f"helm push printed no digest: {pushed.stdout}{pushed.stderr}"
    return Published(
        registry, version, operator_image, runner_image,
        f"oci://{registry.host}/{CHART_NAMESPACE}/{chart_meta['name']}", digest.group(1),
    )


@dataclass(frozen=True)
class Rendezvous:
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Its address on the host (test peers use it; pods use the bridge gateway's forward)."""
        return f"ws://127.0.0.1:{self.port}/crdt-sync"


@contextlib.contextmanager
def run_rendezvous(work: Path) -> Iterator[Rendezvous]:
    work.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = work / "rendezvous.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "huskies_agent", "--log-format", "text", "rendezvous",
             "--host", "127.0.0.1", "--port", str(port), "--db", str(work / "doc.sqlite")],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"rendezvous did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield Rendezvous(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
