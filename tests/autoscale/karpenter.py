"""Karpenter's kwok provider (``sigs.k8s.io/karpenter/kwok``) against the devcluster control plane.

* :func:`karpenter_dir` finds (or builds) the binary and its CRDs with ``tools/karpenter/build.sh``,
  the one place that knows the cache directory (``~/.cache/huskies-agent/karpenter/<key>/``).
* :func:`install_crds`, :func:`nodeclass`, :func:`nodepool` create the objects Karpenter needs.
* :class:`KarpenterKwok` runs the binary as a child process, out of cluster, with the admin
  kubeconfig and leader election off. Karpenter binds its metrics and health servers to every
  interface (``:<port>``, hard-coded), so it runs in its own network namespace
  (``netns_relay.py``): there those servers are loopback-only, and ``/readyz`` and ``/metrics``
  are reached through Unix sockets.

The nodes Karpenter-kwok creates carry the annotation ``kwok.x-k8s.io/node: fake``, so the
devcluster's kwok controller makes them Ready and runs the build pods bound to them.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import yaml

from huskies_agent_dev.devcluster import ControlPlane
from huskies_agent_dev.devcluster._http import AdminClient

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tools" / "karpenter" / "build.sh"
RELAY = Path(__file__).resolve().parent / "netns_relay.py"
BINARY = "karpenter-kwok"

#: Labels Karpenter puts on the nodes it manages.
NODEPOOL_LABEL = "karpenter.sh/nodepool"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
#: Inside Karpenter's network namespace (nothing else listens there).
INNER_APISERVER_PORT = 6443
METRICS_PORT = 8080
HEALTH_PORT = 8081


class KarpenterError(RuntimeError):
    """Karpenter could not be built, installed or started; the message says which step failed."""


class KarpenterNotBuilt(KarpenterError):
    """The binary is not in its cache directory (and building was not asked for)."""


# --------------------------------------------------------------------------------------------------
# binary and CRDs


def karpenter_dir(*, build: bool = True) -> Path:
    """The directory with the binary, crds/ and VERSION, from ``tools/karpenter/build.sh``.

    With ``build`` the script builds what is missing (cheap when cached; ~5 min cold) and a failure
    raises :class:`KarpenterError` naming the step. Without, the script only names the directory, and
    :class:`KarpenterNotBuilt` is raised when it is incomplete.
    """
    if not BUILD_SCRIPT.is_file():
        raise KarpenterError(f"{BUILD_SCRIPT} is missing")
    t0 = time.monotonic()
    # stderr (progress, the failing step) goes straight to ours; the last stdout line is the directory.
    argv = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--dir"])
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    script = BUILD_SCRIPT.relative_to(ROOT)
    if not build and proc.returncode == 3 and lines:
        raise KarpenterNotBuilt(f"Karpenter-kwok is not built in {lines[-1]}: run `make karpenter` "
                                f"(bash {script}, ~5 min cold on 2 cores)")
    if proc.returncode != 0 or not lines:
        raise KarpenterError(f"{script} failed (exit {proc.returncode}); its stderr above names the step")
    out = Path(lines[-1])
    if not os.access(out / BINARY, os.X_OK) or not (out / "crds").is_dir():
        raise KarpenterError(f"{script} printed {out}, which lacks {BINARY} or crds/")
    took = time.monotonic() - t0
    if took > 5:
        print(f"karpenter-kwok built in {took:.0f} s -> {out}", file=sys.stderr)
    return out


def karpenter_version(bin_dir: Path) -> str:
    try:
        return (bin_dir / "VERSION").read_text().strip()
    except OSError:
        return "unknown"


def install_crds(client: AdminClient, crd_dir: Path, timeout: float = 60.0) -> list[str]:
    """Create every CRD in ``crd_dir`` and wait until each one's resources are served."""
    lists: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        client.create_if_missing("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                lists.append(f"/apis/{spec['group']}/{version['name']}/{spec['names']['plural']}")
    deadline = time.monotonic() + timeout
    pending = list(lists)
    while pending:
        status, _ = client.raw("GET", pending[0])
        if status == 200:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise KarpenterError(f"CRD resources not served after {timeout:.0f} s: {pending}")
        time.sleep(0.2)
    return [path.name for path in sorted(crd_dir.glob("*.yaml"))]


# --------------------------------------------------------------------------------------------------
# objects


def nodeclass(name: str = "default", registration_delay: str = "") -> dict[str, Any]:
    """A KWOKNodeClass. ``registration_delay`` (e.g. "5s") models instance boot time."""
    spec: dict[str, Any] = {}
    if registration_delay:
        spec["nodeRegistrationDelay"] = registration_delay
    return {"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass",
            "metadata": {"name": name}, "spec": spec}


def nodepool(
    name: str = "builds",
    *,
    nodeclass_name: str = "default",
    instance_cpu: tuple[str, ...] = ("8",),
    instance_family: tuple[str, ...] = ("c",),
    limit_cpu: str = "40",
    consolidate_after: str = "5s",
    consolidation_policy: str = "WhenEmpty",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A NodePool of Karpenter-kwok's own instance types (``<family>-<cpu>x-<arch>-<os>``, e.g.
    ``c-8x-amd64-linux`` = 8 cpu / 16Gi), on-demand, amd64/linux.

    Empty nodes go after ``consolidate_after`` (policy ``consolidation_policy``, ``WhenEmpty`` by default;
    budget 100 %, so all empty nodes can go at once); ``expireAfter: Never``, as docs/autoscaling.md
    advises for build pools.
    """
    requirements = [
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
        {"key": "karpenter.kwok.sh/instance-family", "operator": "In", "values": list(instance_family)},
        {"key": "karpenter.kwok.sh/instance-cpu", "operator": "In", "values": list(instance_cpu)},
    ]
    template_spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": nodeclass_name},
        "requirements": requirements,
        "expireAfter": "Never",
    }
    if taints:
        template_spec["taints"] = taints
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {"metadata": {"labels": dict(labels or {})}, "spec": template_spec},
            "limits": {"cpu": limit_cpu},
            "disruption": {
                "consolidationPolicy": consolidation_policy,
                "consolidateAfter": consolidate_after,
                "budgets": [{"nodes": "100%"}],
            },
        },
    }


def apply(client: AdminClient, obj: dict[str, Any]) -> None:
    group_version = obj["apiVersion"]
    kind = obj["kind"].lower()
    plural = kind + "es" if kind.endswith("s") else kind + "s"
    client.json("POST", f"/apis/{group_version}/{plural}", obj)


def patch_nodepool(client: AdminClient, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch a NodePool (e.g. its requirements)."""
    return dict(client.json("PATCH", f"/apis/karpenter.sh/v1/nodepools/{name}", patch, ok=(200,),
                            content_type="application/merge-patch+json"))


def events(client: AdminClient, field_selector: str) -> list[dict[str, Any]]:
    """core/v1 Events in every namespace matching ``field_selector`` (e.g. ``involvedObject.kind=Node``)."""
    return list(client.json("GET", f"/api/v1/events?fieldSelector={quote(field_selector)}")["items"])


def karpenter_nodes(client: AdminClient) -> list[dict[str, Any]]:
    items = client.json("GET", f"/api/v1/nodes?labelSelector={NODEPOOL_LABEL}")["items"]
    return list(items)


def nodeclaims(client: AdminClient) -> list[dict[str, Any]]:
    return list(client.json("GET", "/apis/karpenter.sh/v1/nodeclaims")["items"])


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


# --------------------------------------------------------------------------------------------------
# the process


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def unix_get(sock: Path, path: str, timeout: float = 3.0) -> tuple[int, str] | None:
    """GET ``path`` over the Unix socket ``sock``; None when nothing answers."""
    conn = _UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


_SOCK_ROOT = "/tmp"
_SOCK_PREFIX = "hk-karp-"


def sweep_stale_sock_dirs() -> None:
    """Remove socket directories whose owner (pid in the name) is gone (it was killed outright)."""
    for d in Path(_SOCK_ROOT).glob(f"{_SOCK_PREFIX}*-*"):
        pid = d.name[len(_SOCK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


class KarpenterKwok:
    """``karpenter-kwok`` as a child process in its own network namespace; see the module doc."""

    def __init__(
        self,
        bin_dir: Path,
        plane: ControlPlane,
        log_dir: Path,
        *,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        stop_timeout: float = 20.0,
    ) -> None:
        self.bin_dir = bin_dir
        self.plane = plane
        self.log_dir = log_dir
        self.log_path = log_dir / "karpenter.log"
        self.log_level = log_level
        self.extra_args = extra_args
        self.stop_timeout = stop_timeout
        self.sock_dir: Path | None = None
        self.kubeconfig_path = log_dir / "karpenter.kubeconfig"
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_seconds = 0.0

    @property
    def argv(self) -> list[str]:
        return [
            str(self.bin_dir / BINARY),
            "--disable-leader-election",
            f"--metrics-port={METRICS_PORT}",
            f"--health-probe-port={HEALTH_PORT}",
            f"--log-level={self.log_level}",
            *self.extra_args,
        ]

    def __enter__(self) -> KarpenterKwok:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> KarpenterKwok:
        if shutil.which("unshare") is None:
            raise KarpenterError("`unshare` (util-linux) is needed to give Karpenter its own network namespace")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths must stay under 108 bytes, so they live in a short directory.
        sweep_stale_sock_dirs()
        self.sock_dir = Path(tempfile.mkdtemp(prefix=f"{_SOCK_PREFIX}{os.getpid()}-", dir=_SOCK_ROOT))
        self._write_kubeconfig()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}
        host, port = "127.0.0.1", self.plane.server_url.rsplit(":", 1)[1]
        cmd = [
            sys.executable, str(RELAY), "outer", "--sock-dir", str(self.sock_dir),
            "--apiserver", f"{host}:{port}", "--inner-port", str(INNER_APISERVER_PORT),
            f"--expose=health={HEALTH_PORT}", f"--expose=metrics={METRICS_PORT}", "--", *self.argv,
        ]
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(self.log_path, "ab") as log:
            log.write(f"# {time.strftime('%H:%M:%S')} started: {' '.join(cmd)}\n".encode())
            log.flush()
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - self.started_at
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while True:
            self.check_alive()
            last = self.get("/readyz")
            if last is not None and last[0] == 200:
                return
            if time.monotonic() > deadline:
                raise KarpenterError(f"karpenter-kwok not ready after {timeout:.0f} s (last /readyz: {last}); "
                                     f"last lines of {self.log_path}:\n{self.tail(40)}")
            time.sleep(0.25)

    def get(self, path: str) -> tuple[int, str] | None:
        """GET ``path`` from Karpenter's health server ("/readyz", "/healthz") or, for "/metrics", its
        metrics server."""
        if self.sock_dir is None:
            return None
        sock = self.sock_dir / ("metrics.sock" if path.startswith("/metrics") else "health.sock")
        return unix_get(sock, path)

    def metrics(self) -> str:
        answer = self.get("/metrics")
        return answer[1] if answer and answer[0] == 200 else ""

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise KarpenterError(f"karpenter-kwok exited with code {self.popen.returncode}; last lines of "
                                 f"{self.log_path}:\n{self.tail(40)}")

    def stop(self) -> None:
        """SIGTERM to the whole process group (relays and Karpenter), SIGKILL after stop_timeout."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self._killpg(signal.SIGTERM)
                try:
                    self.popen.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._killpg(signal.SIGKILL)
                    self.popen.wait(10)
            # The relays exit with Karpenter; make sure nothing of the group is left either way.
            self._killpg(signal.SIGKILL)
            with contextlib.suppress(OSError), open(self.log_path, "ab") as log:
                log.write(f"# {time.strftime('%H:%M:%S')} stopped (exit {self.popen.returncode})\n".encode())
            self.popen = None
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            self.sock_dir = None

    def _killpg(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _write_kubeconfig(self) -> None:
        pki = self.plane.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devcluster", "cluster": {
                "server": f"https://127.0.0.1:{INNER_APISERVER_PORT}", "certificate-authority": str(pki.ca.cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(pki.admin.cert), "client-key": str(pki.admin.key)}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
            "current-context": "devcluster",
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig_path.chmod(0o600)


__all__ = [
    "BINARY",
    "INSTANCE_TYPE_LABEL",
    "KarpenterError",
    "KarpenterKwok",
    "KarpenterNotBuilt",
    "NODEPOOL_LABEL",
    "apply",
    "condition",
    "install_crds",
    "karpenter_dir",
    "karpenter_nodes",
    "karpenter_version",
    "nodeclaims",
    "nodeclass",
    "events",
    "nodepool",
    "patch_nodepool",
    "unix_get",
]
