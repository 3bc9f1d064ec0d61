"""One autoscaling setup, shared by tests/autoscale and bench/bench_autoscale.py.

:class:`AutoscaleEnv` starts, on loopback and in this order: a cluster-tier control plane whose
only node is a small 1-cpu "system" node (no build pod fits on it), the StoryJob CRD, Karpenter's
CRDs with a KWOKNodeClass and a NodePool, Karpenter-kwok, a rendezvous and one operator; and stops
all of it again (reverse order) on exit, also when start-up fails half-way.

The build pods use the dedicated-pool setup that docs/autoscaling.md recommends: a nodeSelector
(``huskies.dev/pool: build``) that only the NodePool's nodes carry, and a toleration for the
NodePool's taint ``huskies.dev/build=true:NoSchedule``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from tests.autoscale import karpenter
from tests.autoscale.karpenter import KarpenterKwok

from huskies_agent.commands.crd_cmd import crd_text
from huskies_agent_dev.devcluster import ControlPlane, NodeSpec, find_testbin
from huskies_agent_dev.localrun import Proc, start_operator, start_rendezvous

POOL_LABEL = "huskies.dev/pool"
BUILD_TAINT = {"key": "huskies.dev/build", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class AutoscaleConfig:
    """Knobs of the setup; the defaults are the test's."""

    #: Build pod requests (the only thing Karpenter sizes nodes by).
    build_requests: dict[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "1Gi"})
    #: How long each fake build runs (kwok ends the pod Succeeded after this).
    run_for: str = "5s"
    max_concurrent: int = 20
    #: More operator env (e.g. warm slots), and cluster objects made before the operator starts.
    operator_env: dict[str, str] = field(default_factory=dict)
    extra_objects: tuple[tuple[str, dict[str, Any]], ...] = ()
    pending_timeout_seconds: int = 300
    #: Karpenter-kwok instance types allowed: family "c" (2 GiB per cpu) with this many cpus.
    instance_cpu: tuple[str, ...] = ("8",)
    #: ... and of these families (c: 2 GiB per cpu, s: 4 GiB, m: 8 GiB; c is the cheapest).
    instance_family: tuple[str, ...] = ("c",)
    limit_cpu: str = "40"
    consolidate_after: str = "5s"
    #: NodePool disruption.consolidationPolicy (WhenEmpty, or WhenEmptyOrUnderutilized to let
    #: Karpenter move running pods to cheaper nodes: what karpenter.sh/do-not-disrupt prevents).
    consolidation_policy: str = "WhenEmpty"
    #: KWOKNodeClass nodeRegistrationDelay: simulated instance boot time ("" = none).
    registration_delay: str = ""
    system_node_cpu: str = "1"
    karpenter_log_level: str = "info"
    namespace: str = "builds"
    #: Operator settings left at their defaults when ``None``.
    pending_scale_up_timeout_seconds: float | None = None
    resync_interval_seconds: float | None = None


def _optional_env(cfg: AutoscaleConfig) -> dict[str, str]:
    optional = {"HUSKIES_PENDING_SCALE_UP_TIMEOUT_SECONDS": cfg.pending_scale_up_timeout_seconds,
                "HUSKIES_RESYNC_INTERVAL_SECONDS": cfg.resync_interval_seconds}
    return {k: str(v) for k, v in optional.items() if v is not None}


def _operator_env(cfg: AutoscaleConfig) -> dict[str, str]:
    return {
        "HUSKIES_BUILD_REQUESTS": json.dumps(cfg.build_requests),
        "HUSKIES_PENDING_TIMEOUT_SECONDS": str(cfg.pending_timeout_seconds),
        "HUSKIES_MAX_CONCURRENT": str(cfg.max_concurrent),
        "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": cfg.run_for}),
        "HUSKIES_BUILD_NODE_SELECTOR": json.dumps({POOL_LABEL: "build"}),
        "HUSKIES_BUILD_TOLERATIONS": json.dumps([{**BUILD_TAINT, "operator": "Equal"}]),
        **_optional_env(cfg),
    }


class AutoscaleEnv:
    """The whole setup as a context manager; see the module doc. Blocking start-up (~15-30 s)."""

    def __init__(self, run_dir: Path, cfg: AutoscaleConfig | None = None, *, testbin: Path | None = None,
                 karpenter_dir: Path | None = None) -> None:
        """``testbin`` and ``karpenter_dir``: the binaries' directories (``None``: build them if missing)."""
        self.run_dir = run_dir
        self.cfg = cfg or AutoscaleConfig()
        self.log_dir = run_dir / "logs"
        self.testbin = testbin
        self.karpenter_dir: Path | None = karpenter_dir
        self.plane: ControlPlane | None = None
        self.karpenter: KarpenterKwok | None = None
        self.procs: list[Proc] = []
        self.url = ""
        self.operator: Proc | None = None
        self.operator_metrics_port = 0
        self.timings: dict[str, float] = {}
        self.nodepool: dict[str, Any] = {}
        self.nodeclass: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------------

    def __enter__(self) -> AutoscaleEnv:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        cfg = self.cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if self.karpenter_dir is None:
            self.karpenter_dir = karpenter.karpenter_dir()  # builds when missing; raises naming the step
        self.timings["karpenter build/lookup"] = time.monotonic() - t0

        t = time.monotonic()
        system = NodeSpec("system-0", cpu=cfg.system_node_cpu, memory="2Gi", labels={POOL_LABEL: "system"})
        testbin = self.testbin or find_testbin(build=True)
        self.plane = ControlPlane(testbin, self.run_dir / "cluster", tier="cluster", nodes=[system])
        self.plane.start()
        self.timings["control plane"] = time.monotonic() - t

        t = time.monotonic()
        client = self.plane.client
        client.create_if_missing("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(crd_text()))
        self._wait_served("/apis/huskies.dev/v1alpha1/storyjobs")
        karpenter.install_crds(client, self.karpenter_dir / "crds")
        self.nodeclass = karpenter.nodeclass(registration_delay=cfg.registration_delay)
        self.nodepool = karpenter.nodepool(
            instance_cpu=cfg.instance_cpu, instance_family=cfg.instance_family, limit_cpu=cfg.limit_cpu,
            consolidate_after=cfg.consolidate_after,
            consolidation_policy=cfg.consolidation_policy, labels={POOL_LABEL: "build"}, taints=[BUILD_TAINT])
        karpenter.apply(client, self.nodeclass)
        karpenter.apply(client, self.nodepool)
        self.timings["CRDs and objects"] = time.monotonic() - t

        self.karpenter = KarpenterKwok(self.karpenter_dir, self.plane, self.log_dir,
                                       log_level=cfg.karpenter_log_level)
        self.karpenter.start()
        self.timings["karpenter ready"] = self.karpenter.ready_seconds

        self.plane.create_namespace(cfg.namespace)
        for collection, obj in cfg.extra_objects:
            client.create_if_missing(collection, obj)
        rv, self.url = start_rendezvous(self.log_dir)
        self.procs.append(rv)
        self.operator, self.operator_metrics_port = start_operator(
            "autoscale", kubeconfig=str(self.plane.kubeconfig_path), namespace=cfg.namespace,
            rendezvous=self.url, log_dir=self.log_dir, env={**_operator_env(cfg), **cfg.operator_env})
        self.procs.append(self.operator)
        self.timings["total start-up"] = time.monotonic() - t0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.karpenter is not None:
            self.karpenter.stop()
        if self.plane is not None:
            self.plane.stop()

    # ---------------------------------------------------------------------------------------------

    @property
    def cp(self) -> ControlPlane:
        assert self.plane is not None, "not started"
        return self.plane

    @property
    def kp(self) -> KarpenterKwok:
        assert self.karpenter is not None, "not started"
        return self.karpenter

    @property
    def namespace(self) -> str:
        return self.cfg.namespace

    def karpenter_nodes(self) -> list[dict[str, Any]]:
        return karpenter.karpenter_nodes(self.cp.client)

    def nodeclaims(self) -> list[dict[str, Any]]:
        return karpenter.nodeclaims(self.cp.client)

    def check_alive(self) -> None:
        """Raise if a component died (control plane, Karpenter, rendezvous or operator)."""
        self.cp.check_alive()
        self.kp.check_alive()
        for proc in self.procs:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited; last lines of {proc.log_path}:\n{proc.log()[-3000:]}")

    def logs(self, tail_chars: int = 6000) -> str:
        parts = [f"===== {p.name} =====\n{p.log()[-tail_chars:]}" for p in self.procs]
        if self.karpenter is not None:
            parts.append(f"===== karpenter ({self.karpenter.log_path}) =====\n{self.karpenter.log()[-tail_chars:]}")
        return "\n".join(parts)

    def keep_logs(self, target: Path) -> None:
        """Copy every log (ours and the control plane's) to ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        for src in [*self.log_dir.glob("*.log"), *(self.run_dir / "cluster" / "logs").glob("*.log")]:
            shutil.copy2(src, target / src.name)

    def _wait_served(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cp.client.raw("GET", path)[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} not served after {timeout:.0f} s")
            time.sleep(0.2)


__all__ = ["AutoscaleConfig", "AutoscaleEnv", "BUILD_TAINT", "POOL_LABEL"]
