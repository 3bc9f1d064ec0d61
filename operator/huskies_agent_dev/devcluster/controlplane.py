"""A real Kubernetes control plane on loopback, as plain child processes (no Docker).

Tiers:

``apiserver``
    etcd + kube-apiserver. RBAC on, service-account tokens signed (TokenRequest works), the
    ServiceAccount admission plugin off (as envtest does: no controller creates ``default`` SAs).
``cluster``
    + kube-controller-manager (Jobs, GC, namespaces, ServiceAccounts, tokens), kube-scheduler and kwok
    with explicit stages (``kwok-stages.yaml``) and fake Nodes, so Job pods are scheduled, run and end
    Succeeded or Failed as the pod annotations say. ServiceAccount admission stays on.

Usage::

    with ControlPlane(find_testbin(), run_dir, tier="cluster") as cp:
        os.environ["KUBECONFIG"] = str(cp.kubeconfig_path)
        ...

Every process is a :class:`~huskies_agent_dev.proc.Proc` (own session, stdout+stderr in
``<run_dir>/logs/<name>.log``); ports are
random free loopback ports; stop() terminates in reverse start order (SIGTERM, then SIGKILL after a
timeout). Running control planes are also stopped at interpreter exit, on SIGTERM/SIGHUP (when those
still have their default handlers; the process then dies of that signal) and, through
``setpriv --pdeathsig KILL``, when the parent is killed outright.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import string
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal
from urllib.parse import quote

import yaml

from huskies_agent_dev.devcluster._http import AdminClient, ApiError, insecure_context, probe
from huskies_agent_dev.devcluster.pki import Pki, create_pki
from huskies_agent_dev.devcluster.testbin import APISERVER_BINARIES, CLUSTER_BINARIES, missing_binaries
from huskies_agent_dev.proc import Proc
from huskies_agent_dev.proc import tail as tail_of

__all__ = ["ControlPlane", "ControlPlaneError", "Tier", "NodeSpec"]

Tier = Literal["apiserver", "cluster"]

#: Annotation on fake nodes that kwok manages.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"


class ControlPlaneError(RuntimeError):
    """A component failed to start, died, or did not become ready in time."""


@dataclass(frozen=True)
class NodeSpec:
    """A fake kwok Node."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# process-wide cleanup: atexit + SIGTERM/SIGHUP


_RUNNING: set[ControlPlane] = set()
_RUNNING_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_all_running() -> None:
    with _RUNNING_LOCK:
        planes = list(_RUNNING)
    for plane in planes:
        with contextlib.suppress(Exception):
            plane.stop()


def _on_terminate(signum: int, frame: FrameType | None) -> None:
    # Stop our components first, then die of the same signal with its default action (so callers see
    # "killed by SIGTERM"). Raising SystemExit instead would be caught as a mere test failure by pytest.
    _stop_all_running()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_process_cleanup() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all_running)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_terminate)


_SHM = "/dev/shm"
_ETCD_SHM_PREFIX = "huskies-etcd-"


def sweep_stale_etcd_dirs() -> list[Path]:
    """Remove etcd data dirs in /dev/shm whose owning process (pid in the name) is gone.

    They are left behind only when the owner was killed outright (SIGKILL), which gives no chance
    to clean up; the next start-up removes them.
    """
    removed = []
    for d in Path(_SHM).glob(f"{_ETCD_SHM_PREFIX}*-*"):
        pid = d.name[len(_ETCD_SHM_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _package_text(name: str) -> str:
    return resources.files("huskies_agent_dev.devcluster").joinpath(name).read_text(encoding="utf-8")


class ControlPlane:
    """etcd + kube-apiserver (+ kcm, scheduler, kwok) as child processes on loopback."""

    def __init__(
        self,
        bin_dir: Path | str,
        run_dir: Path | str,
        tier: Tier = "apiserver",
        *,
        nodes: Sequence[NodeSpec] | int = 2,
        startup_timeout: float = 120.0,
        stop_timeout: float = 15.0,
        etcd_in_memory: bool = True,
        verbosity: int = 0,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        if tier not in ("apiserver", "cluster"):
            raise ValueError(f"tier must be 'apiserver' or 'cluster', not {tier!r}")
        self.bin_dir = Path(bin_dir).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.tier: Tier = tier
        if isinstance(nodes, int):
            nodes = [NodeSpec(f"kwok-node-{i}") for i in range(nodes)]
        self.nodes: list[NodeSpec] = list(nodes)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.etcd_in_memory = etcd_in_memory
        self.verbosity = verbosity
        self.extra_apiserver_args = list(extra_apiserver_args)

        self.log_dir = self.run_dir / "logs"
        self.kubeconfig_path = self.run_dir / "admin.kubeconfig"
        self.ports: dict[str, int] = {}
        self.startup_seconds: dict[str, float] = {}
        self._procs: list[Proc] = []
        self._pki: Pki | None = None
        self._client: AdminClient | None = None
        self._etcd_dir: Path | None = None
        self._started = False
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------------------------
    # public API

    @property
    def started(self) -> bool:
        return self._started

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self._port('apiserver')}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self._port('etcd')}"

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._pki

    @property
    def client(self) -> AdminClient:
        """A minimal admin JSON client (system:masters)."""
        if self._client is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._client

    @property
    def processes(self) -> dict[str, Proc]:
        return {p.name: p for p in self._procs}

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing at the admin kubeconfig (for subprocesses)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start every component of the tier and wait until all are ready."""
        with self._lock:
            if self._started:
                return self
            need = CLUSTER_BINARIES if self.tier == "cluster" else APISERVER_BINARIES
            missing = missing_binaries(self.bin_dir, need)
            if missing:
                raise ControlPlaneError(f"{self.bin_dir} lacks executable {', '.join(missing)}")
            _install_process_cleanup()
            self._started = True
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop all processes in reverse start order (SIGTERM, then SIGKILL), remove etcd's data."""
        timeout = self.stop_timeout if timeout is None else timeout
        with self._lock:
            for proc in reversed(self._procs):
                proc.stop(timeout)
            self._procs.clear()
            if self._etcd_dir is not None:
                shutil.rmtree(self._etcd_dir, ignore_errors=True)
                self._etcd_dir = None
            self._started = False
            with _RUNNING_LOCK:
                _RUNNING.discard(self)

    def check_alive(self) -> None:
        """Raise ControlPlaneError (with the log tail) if a component has exited."""
        for proc in self._procs:
            if proc.poll() is not None:
                raise self._died(proc)

    def log_paths(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in self._procs} or {f.stem: f for f in sorted(self.log_dir.glob("*.log"))}

    def logs(self, tail: int | None = None) -> dict[str, str]:
        """Each component's log (whole, or its last ``tail`` lines)."""
        out: dict[str, str] = {}
        for name, path in self.log_paths().items():
            if tail is None:
                out[name] = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            else:
                out[name] = tail_of(path, tail)
        return out

    def format_logs(self, tail: int | None = 200) -> str:
        parts = []
        for name, text in self.logs(tail).items():
            what = "log" if tail is None else f"last {tail} lines"
            parts.append(f"===== {name} ({what} of {self.log_dir / (name + '.log')}) =====\n{text}")
        return "\n".join(parts)

    def write_kubeconfig(self, user: str, groups: Sequence[str] = (), path: Path | str | None = None) -> Path:
        """Mint a client certificate (CN=user, O=groups) and write a kubeconfig that uses it."""
        cert = self.pki.client_cert(user, groups)
        target = Path(path) if path else self._kubeconfig_dir() / f"{cert.cert.stem}.kubeconfig"
        self._write_kubeconfig(target, user, {"client-certificate": str(cert.cert), "client-key": str(cert.key)})
        return target

    def serviceaccount_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        create: bool = True,
        expiration_seconds: int = 24 * 3600,
        path: Path | str | None = None,
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount ``namespace/name`` with a TokenRequest token.

        With ``create`` the namespace and the ServiceAccount are created when missing.
        """
        if create:
            self.create_namespace(namespace, wait_for_serviceaccount=False)
            self.client.create_if_missing(
                f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
        answer = self.client.json(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(name)}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        token = answer["status"]["token"]
        user = f"system:serviceaccount:{namespace}:{name}"
        target = Path(path) if path else self._kubeconfig_dir() / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(target, user, {"token": token})
        return target

    def create_namespace(self, name: str, *, wait_for_serviceaccount: bool | None = None) -> None:
        """Create a namespace if missing; in the cluster tier also wait for its ``default`` SA.

        Pods are rejected until the ServiceAccount admission plugin finds the ``default`` SA, which
        kube-controller-manager creates a moment after the namespace.
        """
        self.client.create_if_missing(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        if wait_for_serviceaccount is None:
            wait_for_serviceaccount = self.tier == "cluster"
        if wait_for_serviceaccount:
            self.wait_for_default_serviceaccount(name)

    def wait_for_default_serviceaccount(self, namespace: str, timeout: float = 30.0) -> None:
        path = f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/default"
        self._poll(
            lambda: self.client.get_or_none(path) is not None,
            timeout,
            f"ServiceAccount {namespace}/default (created by kube-controller-manager)",
            watch=self._proc_named("kube-controller-manager"),
        )

    # ---------------------------------------------------------------------------------------------
    # start-up

    def _start(self) -> None:
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._pki = create_pki(self.run_dir / "pki")
        names = ["etcd", "etcd-peer", "apiserver"]
        if self.tier == "cluster":
            names += ["kube-controller-manager", "kube-scheduler", "kwok"]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self._write_kubeconfig(
            self.kubeconfig_path,
            "admin",
            {"client-certificate": str(self.pki.admin.cert), "client-key": str(self.pki.admin.key)},
        )
        self._client = AdminClient(
            self.server_url,
            ca=str(self.pki.ca.cert),
            cert=str(self.pki.admin.cert),
            key=str(self.pki.admin.key),
        )
        self.startup_seconds["pki"] = time.monotonic() - t0

        self._start_etcd()
        self._start_apiserver()
        if self.tier == "cluster":
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._create_nodes()
            self.wait_for_default_serviceaccount("default", timeout=self.startup_timeout)
            self.startup_seconds["default-serviceaccount"] = time.monotonic() - t0
        self.startup_seconds["total"] = time.monotonic() - t0

    def _start_etcd(self) -> None:
        if self.etcd_in_memory and os.access(_SHM, os.W_OK):
            sweep_stale_etcd_dirs()
            self._etcd_dir = Path(tempfile.mkdtemp(prefix=f"{_ETCD_SHM_PREFIX}{os.getpid()}-", dir=_SHM))
        else:
            self._etcd_dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=self.run_dir))
        client_url = self.etcd_url
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        proc = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=devcluster",
                f"--data-dir={self._etcd_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=devcluster={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def ready() -> bool:
            answer = probe(f"{client_url}/health")
            if answer is None or answer[0] != 200:
                return False
            with contextlib.suppress(ValueError):
                return bool(json.loads(answer[1]).get("health") == "true")
            return False

        self._wait_ready(proc, ready, "etcd /health")

    def _start_apiserver(self) -> None:
        pki = self.pki
        port = self.ports["apiserver"]
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.run_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            # Publishes the requestheader CA in kube-system/extension-apiserver-authentication, which
            # kcm and the scheduler read (they log errors every few seconds without it).
            f"--requestheader-client-ca-file={pki.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{port}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--v={self.verbosity}",
        ]
        if self.tier == "apiserver":
            argv.append("--disable-admission-plugins=ServiceAccount")
        argv += self.extra_apiserver_args
        proc = self._spawn("kube-apiserver", argv)

        def ready() -> bool:
            try:
                status, _ = self.client.raw("GET", "/readyz", accept="text/plain")
            except OSError:
                return False
            return status == 200

        self._wait_ready(proc, ready, "kube-apiserver /readyz")

    def _component_flags(self, name: str) -> list[str]:
        kubeconfig = str(self.kubeconfig_path)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[name]}",
            f"--cert-dir={self.run_dir / (name + '-certs')}",
            "--leader-elect=false",
            f"--v={self.verbosity}",
        ]

    def _wait_healthz(self, proc: Proc) -> None:
        url = f"https://127.0.0.1:{self.ports[proc.name]}/healthz"
        ctx = insecure_context()

        def ready() -> bool:
            answer = probe(url, context=ctx)
            return answer is not None and answer[0] == 200

        self._wait_ready(proc, ready, f"{proc.name} /healthz")

    def _start_controller_manager(self) -> None:
        name = "kube-controller-manager"
        proc = self._spawn(
            name,
            [
                str(self.bin_dir / name),
                *self._component_flags(name),
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca.cert}",
                "--use-service-account-credentials=false",
                "--cluster-name=huskies-devcluster",
            ],
        )
        self._wait_healthz(proc)

    def _start_scheduler(self) -> None:
        name = "kube-scheduler"
        proc = self._spawn(name, [str(self.bin_dir / name), *self._component_flags(name)])
        self._wait_healthz(proc)

    def _start_kwok(self) -> None:
        stages = self.run_dir / "kwok-stages.yaml"
        stages.write_text(_package_text("kwok-stages.yaml"), encoding="utf-8")
        address = f"127.0.0.1:{self.ports['kwok']}"
        proc = self._spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig_path}",
                f"--config={stages}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.1.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address={address}",
            ],
        )

        def ready() -> bool:
            answer = probe(f"http://{address}/healthz")
            return answer is not None and answer[0] == 200

        self._wait_ready(proc, ready, "kwok /healthz")

    def _create_nodes(self) -> None:
        template = string.Template(_package_text("kwok-node.yaml"))
        for i, node in enumerate(self.nodes):
            manifest = yaml.safe_load(
                template.substitute(
                    name=node.name, cpu=node.cpu, memory=node.memory, pods=node.pods, ip=f"10.1.0.{10 + i}"
                )
            )
            manifest["metadata"]["labels"].update(node.labels)
            self.client.create_if_missing("/api/v1/nodes", manifest)

        def all_ready() -> bool:
            for node in self.nodes:
                obj = self.client.get_or_none(f"/api/v1/nodes/{quote(node.name)}")
                if obj is None:
                    return False
                conditions = obj.get("status", {}).get("conditions") or []
                if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                    return False
                if any(t.get("key") == "node.kubernetes.io/not-ready" for t in obj["spec"].get("taints", [])):
                    return False
            return True

        t0 = time.monotonic()
        self._poll(all_ready, self.startup_timeout, "fake nodes Ready", watch=self._proc_named("kwok"))
        self.startup_seconds["nodes"] = time.monotonic() - t0

    # ---------------------------------------------------------------------------------------------
    # processes

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.log_dir, cwd=self.run_dir, die_with_parent=True)
        try:
            proc.start()
        except OSError as exc:
            raise ControlPlaneError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        self._procs.append(proc)
        return proc

    def _proc_named(self, name: str) -> Proc | None:
        return next((p for p in self._procs if p.name == name), None)

    def _died(self, proc: Proc) -> ControlPlaneError:
        return ControlPlaneError(
            f"{proc.name} exited with code {proc.returncode}; last lines of {proc.log_path}:\n"
            + tail_of(proc.log_path, 40)
        )

    def _wait_ready(self, proc: Proc, ready: Callable[[], bool], what: str) -> None:
        self._poll(ready, self.startup_timeout, what, watch=proc)
        self.startup_seconds[proc.name] = time.monotonic() - proc.started_at

    def _poll(self, check: Callable[[], bool], timeout: float, what: str, *, watch: Proc | None = None) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if watch is not None and watch.poll() is not None:
                raise self._died(watch)
            try:
                if check():
                    return
            except (ApiError, OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                detail = ""
                if watch is not None:
                    detail = f"; last lines of {watch.log_path}:\n" + tail_of(watch.log_path, 40)
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # ---------------------------------------------------------------------------------------------
    # helpers

    def _port(self, name: str) -> int:
        try:
            return self.ports[name]
        except KeyError:
            raise ControlPlaneError("the control plane has not been started") from None

    def _kubeconfig_dir(self) -> Path:
        d = self.run_dir / "kubeconfigs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict[str, str]) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {"server": self.server_url, "certificate-authority": str(self.pki.ca.cert)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
            "current-context": "devcluster",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<ControlPlane tier={self.tier} {state} run_dir={self.run_dir}>"
