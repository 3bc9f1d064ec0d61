"""A user's install, for real up to the node: images and chart from a real OCI registry.

Both images built from the Dockerfile (tools/images/build.sh) and the packaged chart are pushed to
go-containerregistry's registry on loopback; ``helm install huskies-agent oci://...`` then installs
from it with the image repositories set to that registry, exactly as the README's quickstart says.
The control plane's nodes are kwok here, so the pods do not pull: the test checks that everything
they reference is in the registry, and that what helm installed is the chart the registry serves.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import Helm
from tests.realrun.stack import OPERATOR_REPOSITORY, RUNNER_REPOSITORY, Published

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RELEASE = "huskies-agent"
NS = "huskies-realrun"
HELM_CONFIG_MEDIA_TYPE = "application/vnd.cncf.helm.config.v1+json"


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _repository(image_ref: str) -> str:
    return image_ref.rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def installed(published: Published, realrun_helm: Helm, cluster: Any) -> Iterator[tuple[str, Path]]:
    kubeconfig = Path(cluster.kubeconfig_path)
    proc = realrun_helm.run(
        "install", RELEASE, published.chart_url, "--version", published.version, "--plain-http",
        "--namespace", NS, "--create-namespace", "--wait=false",
        "--set", "rendezvous.url=ws://huskies-rendezvous:3001/crdt-sync",
        "--set", f"image.repository={_repository(published.operator_image)}",
        "--set", f"build.image.repository={_repository(published.runner_image)}",
        kubeconfig=kubeconfig,
    )
    try:
        yield proc.stdout + proc.stderr, kubeconfig
    finally:
        realrun_helm.run("uninstall", RELEASE, "--namespace", NS, kubeconfig=kubeconfig, check=False)


def test_both_images_and_the_chart_are_in_the_registry(published: Published) -> None:
    reg = published.registry
    assert reg.tags(OPERATOR_REPOSITORY) == [published.version]
    assert reg.tags(RUNNER_REPOSITORY) == [published.version]
    digest, manifest = reg.manifest("charts/huskies-agent", published.version)
    assert digest == published.chart_digest
    assert manifest["config"]["mediaType"] == HELM_CONFIG_MEDIA_TYPE
    chart_meta = json.loads(reg.blob("charts/huskies-agent", manifest["config"]["digest"]))
    assert (chart_meta["name"], chart_meta["appVersion"]) == ("huskies-agent", published.version)


def test_helm_installs_the_chart_the_registry_serves(installed: tuple[str, Path], published: Published) -> None:
    output, _kubeconfig = installed
    pulled = re.search(r"Pulled:\s*(\S+)", output)
    digest = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", output)
    assert pulled and digest, f"helm install did not pull from a registry:\n{output}"
    assert pulled.group(1) == f"{published.registry.host}/charts/huskies-agent:{published.version}"
    assert digest.group(1) == published.chart_digest


def test_operator_pods_and_build_config_reference_the_registry_images(
    installed: tuple[str, Path], published: Published,
) -> None:
    from kubernetes import client, config

    _output, kubeconfig = installed
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        deployment = client.AppsV1Api(api).read_namespaced_deployment(RELEASE, NS)
        images = [c.image for c in deployment.spec.template.spec.containers]
        assert images == [published.operator_image]
        core = client.CoreV1Api(api)

        def pods_reference_the_registry() -> bool:
            pods = core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/name=huskies-agent").items
            return bool(pods) and all(
                [c.image for c in p.spec.containers] == [published.operator_image] for p in pods
            )

        _wait(pods_reference_the_registry, "the operator's pods, with the registry's image")
        settings = yaml.safe_load(core.read_namespaced_config_map(f"{RELEASE}-config", NS).data["config.yaml"])
        assert settings["build"]["image"] == published.runner_image
    finally:
        api.close()

    # Every image a pod or a build Job of this install names is served by the registry.
    for ref in (published.operator_image, published.runner_image):
        repository, tag = ref.removeprefix(published.registry.host + "/").rsplit(":", 1)
        _digest, manifest = published.registry.manifest(repository, tag)
        assert manifest["layers"], f"{ref} has no layers in the registry"
