"""Fixtures of the real-run tier: the built images, a real registry, and what is published to it.

``built_images``  both Dockerfile targets (tools/images/build.sh), with their sizes.
``registry``      go-containerregistry's registry on 127.0.0.1 (stopped at the end, also on failure).
``published``     both images and the packaged chart pushed to that registry, the way a user publishes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from tests.chart.chartlib import CHART, Helm, find_helm_binary
from tests.realrun.artifacts import IMAGES_SCRIPT, REGISTRY_SCRIPT, BuiltImages, artifact_dir, load_images
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
