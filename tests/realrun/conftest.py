"""Fixtures of the real-run tier: the built images, a real registry, and what is published to it.

``built_images``  both Dockerfile targets (tools/images/build.sh), with their sizes.
``registry``      go-containerregistry's registry on 127.0.0.1 (stopped at the end, also on failure).
``published``     both images and the packaged chart pushed to that registry, the way a user publishes.
``rendezvous``    a real rendezvous (``huskies-agent rendezvous``) on 127.0.0.1, for operators on the node.
``real_node``     a real kubelet node in its own network namespace (tests.realrun.node), registered
                  with the ``cluster`` control plane; it reaches the registry and the rendezvous.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART, Helm, find_helm_binary
from tests.realrun.artifacts import (
    IMAGES_SCRIPT,
    NODE_SCRIPT,
    REGISTRY_SCRIPT,
    BuiltImages,
    artifact_dir,
    load_images,
)
from tests.realrun.node import RealNode, node_ready
from tests.realrun.registry import Registry

OPERATOR_REPOSITORY = "huskies/huskies-agent"
RUNNER_REPOSITORY = "huskies/huskies-agent-runner"
CHART_NAMESPACE = "charts"
NODE = "real-node-0"


@dataclass(frozen=True)
class Published:
    registry: Registry
    version: str  # the chart's version and appVersion: the images' tag
    operator_image: str  # <host>/<repo>:<tag>
    runner_image: str
    chart_url: str  # oci://<host>/charts/huskies-agent
    chart_digest: str


@pytest.fixture(scope="session")
def built_images() -> BuiltImages:
    images = load_images(artifact_dir(IMAGES_SCRIPT))
    for image in (images.operator, images.runner):
        print(f"image {image.target}: {image.size} uncompressed, {image.archive_bytes / 1e6:.0f} MB archive")
    return images


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    crane = artifact_dir(REGISTRY_SCRIPT) / "crane"
    reg = Registry(crane, tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def realrun_helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm_binary(), tmp_path_factory.mktemp("realrun-helm-home"))


@pytest.fixture(scope="session")
def published(
    built_images: BuiltImages, registry: Registry, realrun_helm: Helm, tmp_path_factory: pytest.TempPathFactory,
) -> Published:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = str(chart_meta["appVersion"])
    assert version == str(chart_meta["version"]), "the images are tagged with the chart's appVersion"
    operator_image = registry.push_archive(built_images.operator.archive, OPERATOR_REPOSITORY, version)
    runner_image = registry.push_archive(built_images.runner.archive, RUNNER_REPOSITORY, version)

    out = tmp_path_factory.mktemp("chart-package")
    realrun_helm.run("package", str(CHART), "--destination", str(out))
    package = out / f"{chart_meta['name']}-{chart_meta['version']}.tgz"
    assert package.is_file(), f"helm package made no {package.name}"
    pushed = realrun_helm.run("push", str(package), f"oci://{registry.host}/{CHART_NAMESPACE}", "--plain-http")
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


@pytest.fixture(scope="session")
def rendezvous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendezvous]:
    work = tmp_path_factory.mktemp("rendezvous")
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


@pytest.fixture(scope="session")
def core(cluster: Any) -> Iterator[Any]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


@pytest.fixture(scope="session")
def real_node(
    cluster: Any, core: Any, published: Published, rendezvous: Rendezvous, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealNode]:
    from kubernetes.client.exceptions import ApiException

    node = RealNode(
        NODE, artifact_dir(NODE_SCRIPT), Path(cluster.kubeconfig_path), tmp_path_factory.mktemp("real-node"),
        forward_ports=(published.registry.port, rendezvous.port),
    )
    try:
        node.start()

        def ready() -> bool:
            try:
                return node_ready(core.read_node(NODE).to_dict())
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise

        node.wait_ready(ready)
        yield node
    finally:
        node.stop()
        try:
            core.delete_node(NODE)
        except ApiException as exc:
            if exc.status != 404:
                raise
