"""Shared pytest fixtures: a real Kubernetes control plane on loopback (huskies_agent_dev.devcluster).

Fixtures (all start lazily, at most once per test session):

``cluster``      ControlPlane, tier "cluster": etcd, kube-apiserver, kube-controller-manager,
                 kube-scheduler, kwok and two fake 8-cpu/32Gi nodes (Job pods really run and end).
``apiserver``    ControlPlane for tests that need only the API (CRDs, RBAC, SSA, watches, helm).
                 When any collected test uses ``cluster``, this is the *same* cluster-tier control
                 plane (one start-up per run); otherwise it is a lighter etcd + kube-apiserver tier.
                 Tests must therefore not rely on controllers being absent.
``kube_env``     KubeEnv for the ``apiserver`` plane with $KUBECONFIG set for the test.
``cluster_kube_env``  the same for the ``cluster`` plane.
``testbin``      Path of the directory with the binaries (for tests that start their own plane).

Binaries come from tools/testbin/build.sh (see huskies_agent_dev.devcluster.testbin). Outside CI, tests
are skipped when the binaries are not built; with $CI set, build.sh is run and a failure is an error.
When a test using a control plane fails, the tail of every component's log is attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from huskies_agent_dev.devcluster import ControlPlane, TestbinNotFound, Tier, find_testbin
from huskies_agent_dev.devcluster.testbin import APISERVER_BINARIES, CLUSTER_BINARIES

_CONTROL_PLANE_FIXTURES = ("apiserver", "cluster", "kube_env", "cluster_kube_env")
_LOG_TAIL_LINES = 150
_planes: dict[str, ControlPlane] = {}
_cluster_wanted = False


@dataclass(frozen=True)
class KubeEnv:
    """What a test needs to talk to the control plane (also as a subprocess environment)."""

    kubeconfig: Path
    server: str
    control_plane: ControlPlane

    @property
    def env(self) -> dict[str, str]:
        return self.control_plane.env()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note whether this run needs the cluster tier (after -k/-m deselection)."""
    global _cluster_wanted
    _cluster_wanted = any(
        {"cluster", "cluster_kube_env"} & set(getattr(item, "fixturenames", ())) for item in session.items
    )


def _testbin(need: tuple[str, ...]) -> Path:
    if os.environ.get("CI"):
        return find_testbin(build=True, need=need)  # raises, naming the failed build step
    try:
        return find_testbin(need=need)
    except TestbinNotFound as exc:
        pytest.skip(f"control plane binaries not built: {exc}")


@pytest.fixture(scope="session")
def testbin() -> Path:
    """The directory with every control-plane binary (built by tools/testbin/build.sh)."""
    return _testbin(CLUSTER_BINARIES)


def _start(tier: Tier, tmp_path_factory: pytest.TempPathFactory) -> ControlPlane:
    bin_dir = _testbin(CLUSTER_BINARIES if tier == "cluster" else APISERVER_BINARIES)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp(f"controlplane-{tier}"), tier=tier)
    _planes[tier] = plane
    plane.start()
    return plane


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = _start("cluster", tmp_path_factory)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def apiserver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if _cluster_wanted:
        plane: ControlPlane = request.getfixturevalue("cluster")
        yield plane
        return
    plane = _start("apiserver", tmp_path_factory)
    try:
        yield plane
    finally:
        plane.stop()


def _kube_env(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> KubeEnv:
    plane.check_alive()
    monkeypatch.setenv("KUBECONFIG", str(plane.kubeconfig_path))
    return KubeEnv(plane.kubeconfig_path, plane.server_url, plane)


@pytest.fixture
def kube_env(apiserver: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> KubeEnv:
    return _kube_env(apiserver, monkeypatch)


@pytest.fixture
def cluster_kube_env(cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> KubeEnv:
    return _kube_env(cluster, monkeypatch)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    uses_plane = any(f in getattr(item, "fixturenames", ()) for f in _CONTROL_PLANE_FIXTURES)
    if report.failed and uses_plane:
        for tier, plane in _planes.items():
            for name, text in plane.logs(tail=_LOG_TAIL_LINES).items():
                report.sections.append((f"{tier} control plane: {name} (last {_LOG_TAIL_LINES} lines)", text))
            report.sections.append(
                (f"{tier} control plane: log files", "\n".join(str(p) for p in plane.log_paths().values()))
            )
    return report
