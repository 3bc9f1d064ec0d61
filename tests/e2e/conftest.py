"""Fixtures for operator tests on the real control plane with a real rendezvous."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from tests.e2e.harness import Proc, dump, start_operator, start_rendezvous

from huskies_agent_dev.devcluster import ControlPlane

_counter = itertools.count()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def apply_storyjob_crd(kubeconfig: str) -> None:
    """Create the StoryJob CRD and wait until it is served (Established is not enough)."""
    api = kconfig.new_client_from_config(kubeconfig)
    ext = kclient.ApiextensionsV1Api(api)
    body = yaml.safe_load(resources.files("huskies_agent").joinpath("crds/storyjobs.yaml").read_text())
    try:
        ext.create_custom_resource_definition(body)
    except kclient.ApiException as exc:
        if exc.status != 409:
            raise
    custom = kclient.CustomObjectsApi(api)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            custom.list_cluster_custom_object("huskies.dev", "v1alpha1", "storyjobs")
            return
        except kclient.ApiException as exc:
            if exc.status not in (404, 429, 503):  # not yet established / storage initializing
                raise
        time.sleep(0.2)
    raise TimeoutError("StoryJob CRD not served")


@pytest.fixture(scope="session")
def storyjob_crd(cluster: ControlPlane) -> ControlPlane:
    apply_storyjob_crd(str(cluster.kubeconfig_path))
    return cluster


@pytest.fixture
def namespace_factory(storyjob_crd: ControlPlane) -> Callable[[], str]:
    def make() -> str:
        name = f"op-{next(_counter)}-{int(time.time() * 1000) % 100000}"
        storyjob_crd.create_namespace(name)
        return name

    return make


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()
    if _failed(request):
        print(dump(*started))


@pytest.fixture
def rendezvous(log_dir: Path, procs: list[Proc]) -> str:
    proc, url = start_rendezvous(log_dir)
    procs.append(proc)
    return url


class OperatorFactory:
    def __init__(self, cluster: ControlPlane, rendezvous: str, log_dir: Path, procs: list[Proc]) -> None:
        self.cluster = cluster
        self.rendezvous = rendezvous
        self.log_dir = log_dir
        self.procs = procs

    def __call__(self, name: str, namespace: str, env: dict[str, str] | None = None) -> tuple[Proc, int]:
        proc, port = start_operator(name, kubeconfig=str(self.cluster.kubeconfig_path), namespace=namespace,
                                    rendezvous=self.rendezvous, log_dir=self.log_dir, env=env)
        self.procs.append(proc)
        return proc, port


@pytest.fixture
def start_op(storyjob_crd: ControlPlane, rendezvous: str, log_dir: Path, procs: list[Proc]) -> OperatorFactory:
    return OperatorFactory(storyjob_crd, rendezvous, log_dir, procs)
