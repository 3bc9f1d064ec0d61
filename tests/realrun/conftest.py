"""Fixtures of the real-run tier: the built images, a real registry, and what is published to it.

``built_images``  both Dockerfile targets (tools/images/build.sh), with their sizes.
``registry``      go-containerregistry's registry on 127.0.0.1 (stopped at the end, also on failure).
``published``     both images and the packaged chart pushed to that registry, the way a user publishes.
``rendezvous``    a real rendezvous (``huskies-agent rendezvous``) on 127.0.0.1, for operators on the node.
``real_node``     a real kubelet node in its own network namespace (tests.realrun.node), registered
                  with the ``cluster`` control plane; it reaches the registry and the rendezvous.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.chart.chartlib import Helm, find_helm_binary
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
from tests.realrun.stack import Published, Rendezvous, publish, run_rendezvous

__all__ = ["NODE", "Published", "Rendezvous"]

NODE = "real-node-0"


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
    return publish(built_images, registry, realrun_helm, tmp_path_factory.mktemp("chart-package"))


@pytest.fixture(scope="session")
def rendezvous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendezvous]:
    with run_rendezvous(tmp_path_factory.mktemp("rendezvous")) as running:
        yield running


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
