"""A real Kubernetes node for the tests: containerd (CRI) + runc + CNI from Debian, and a kubelet
built from the control plane's own Kubernetes version (tools/node/build.sh), all inside a network
namespace the test creates (:mod:`tests.realrun.netns`).

The node reaches the API server and the registry only through forwards on the same port numbers
(listening on all of the namespace's addresses), so the control plane's kubeconfig and the
registry's ``127.0.0.1:<port>`` image names work unchanged inside the namespace. Pods run with
``hostNetwork`` (the node's namespace) or on a bridge (``10.252.0.0/24``) inside the namespace: from
there they reach the forwards at the bridge's gateway, and the ``kubernetes`` Service address
(10.0.0.1:443) is NATed to the API server's forward, standing in for kube-proxy for that one
Service. The node is tainted so the kwok tier's pods never land on it. :meth:`RealNode.stop` kills
every container, shim, kubelet and containerd it started and unmounts what they mounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.realrun.netns import Forward, NetNs

SANDBOX_IMAGE = "localhost/huskies-pause:latest"
#: The pods' bridge inside the node's namespace; its gateway is where pods reach the forwards.
POD_SUBNET = "10.252.0.0/24"
POD_GATEWAY = "10.252.0.1"
#: The control plane's ``kubernetes`` Service (first address of its service range).
KUBERNETES_SERVICE_IP = "10.0.0.1"
TAINT_KEY = "huskies.dev/real-node"
START_TIMEOUT = 120.0
CNI_BIN_DIR = Path("/usr/lib/cni")


class NodeError(RuntimeError):
    pass


@dataclass
class RealNode:
    name: str
    node_bin: Path  # tools/node/build.sh output: kubelet, pause.oci.tar
    kubeconfig: Path  # an admin kubeconfig of the control plane (https://127.0.0.1:<port>)
    workdir: Path
    forward_ports: tuple[int, ...] = ()  # host loopback ports the node may reach (registry, ...)
    netns: NetNs | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _forwards: list[Forward] = field(default_factory=list)
    _netns_before: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ paths
    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """The namespace, the forwards (API server too), containerd with the sandbox image, kubelet."""
        api_port = urlsplit(self._server()).port
        assert api_port is not None
        self.start_runtime(extra_ports=(api_port,))
        self._nat_kubernetes_service(api_port)
        self.ctr("images", "import", "--base-name", SANDBOX_IMAGE.rsplit(":", 1)[0],
                 "--index-name", SANDBOX_IMAGE, str(self.node_bin / "pause.oci.tar"))
        self._start_kubelet()

    def start_runtime(self, extra_ports: tuple[int, ...] = ()) -> None:
        """The namespace, its loopback forwards and containerd (no kubelet)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._netns_before = _named_netns()
        self.netns = NetNs()
        for port in (*extra_ports, *self.forward_ports):
            self._forwards.append(Forward(self.netns, port, host="0.0.0.0"))
        self._start_containerd()

    def forward(self, port: int) -> None:
        """One more host loopback port the node and its pods reach (at the bridge gateway too),
        for servers a test starts after the node (the git server, the model API)."""
        assert self.netns is not None, "start the node first"
        if any(f.port == port for f in self._forwards):
            return
        self._forwards.append(Forward(self.netns, port, host="0.0.0.0"))

    def _nat_kubernetes_service(self, api_port: int) -> None:
        assert self.netns is not None
        proc = subprocess.run(self.netns.argv([
            "iptables", "-t", "nat", "-A", "PREROUTING", "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp",
            "--dport", "443", "-j", "DNAT", "--to-destination", f"{POD_GATEWAY}:{api_port}",
        ]), capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise NodeError(f"iptables DNAT for the kubernetes Service failed: {proc.stderr}")

    def _server(self) -> str:
        import yaml

        config = yaml.safe_load(self.kubeconfig.read_text())
        return str(config["clusters"][0]["cluster"]["server"])

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        assert self.netns is not None
        log = self.log(name).open("ab")
        proc = subprocess.Popen(self.netns.argv(argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[name] = proc
        return proc

    def _wait(self, predicate: Callable[[], bool], what: str, proc: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            running = self._procs[proc]
            if running.poll() is not None:
                raise NodeError(f"{proc} exited ({running.returncode}) before {what}:\n{self.tail(proc)}")
            if time.monotonic() > deadline:
                raise NodeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.tail(proc)}")
            time.sleep(0.25)

    def tail(self, name: str, lines: int = 60) -> str:
        path = self.log(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-pods.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "huskies-pods",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": str(self.workdir / "cni-ipam"),
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        }))
        mirrors = "".join(
            f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:{p}"]\n'
            f'  endpoint = ["http://127.0.0.1:{p}"]\n'
            for p in self.forward_ports
        )
        config = self.workdir / "containerd.toml"
        config.write_text(textwrap.dedent(f"""\
            version = 2
            root = "{root}/root"
            state = "{root}/state"
            disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                                "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
            [grpc]
              address = "{self.socket}"
            [ttrpc]
              address = "{self.socket}.ttrpc"
            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{SANDBOX_IMAGE}"
              restrict_oom_score_adj = true
              enable_selinux = false
            [plugins."io.containerd.grpc.v1.cri".containerd]
              snapshotter = "overlayfs"
              default_runtime_name = "runc"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
              SystemdCgroup = false
            [plugins."io.containerd.grpc.v1.cri".cni]
              bin_dir = "{CNI_BIN_DIR}"
              conf_dir = "{cni_conf}"
            """) + mirrors)
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(lambda: self.socket.exists() and self._ctr_ok(), "containerd's socket", "containerd")

    def ctr(self, *args: str, timeout: float = 600) -> str:
        """containerd's CLI, run inside the namespace (``ctr images pull`` fetches client-side)."""
        assert self.netns is not None
        proc = subprocess.run(
            self.netns.argv(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args]),
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _ctr_ok(self) -> bool:
        try:
            self.ctr("version", timeout=10)
        except (NodeError, subprocess.TimeoutExpired):
            return False
        return True

    def _start_kubelet(self) -> None:
        kubelet_root = self.workdir / "kubelet"
        kubelet_root.mkdir(parents=True, exist_ok=True)
        self.pod_logs.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "podLogsDir": str(self.pod_logs),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
        }))
        self._spawn("kubelet", [
            str(self.node_bin / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={kubelet_root}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-labels={TAINT_KEY}=true",
            "--v=2",
        ])

    def wait_ready(self, is_ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        self._wait(is_ready, f"node {self.name} Ready", "kubelet", timeout)

    def stop(self) -> None:
        """Stop kubelet, every container and shim, containerd; unmount; delete the namespace."""
        kubelet = self._procs.pop("kubelet", None)
        if kubelet is not None:
            _terminate(kubelet)
        if "containerd" in self._procs and self.socket.exists():
            with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
                for task in self.ctr("tasks", "ls", "--quiet", timeout=30).split():
                    with contextlib.suppress(NodeError):
                        self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=30)
        for pid in _shims(self.socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        containerd = self._procs.pop("containerd", None)
        if containerd is not None:
            _terminate(containerd)
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        _unmount_below(self.workdir)
        _remove_links_into(Path("/var/log/containers"), self.workdir)
        _remove_empty_cgroups("k8s.io")
        # containerd pins each pod sandbox's namespace as /run/netns/cni-<id>; killed sandboxes leave it.
        for name in sorted(_named_netns() - self._netns_before):
            if name.startswith("cni-"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        if self.netns is not None:
            self.netns.close()
            self.netns = None


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _shims(socket: Path) -> list[int]:
    """containerd-shim processes serving our containerd (their command line names its socket)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _unmount_below(directory: Path) -> None:
    prefix = str(directory.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)


def _remove_links_into(directory: Path, target: Path) -> None:
    """The kubelet links each container's log into /var/log/containers: drop the links into ours."""
    if not directory.is_dir():
        return
    prefix = str(target.resolve()) + "/"
    for link in directory.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()


def _named_netns() -> frozenset[str]:
    directory = Path("/run/netns")
    return frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()


def _remove_empty_cgroups(name: str) -> None:
    """containerd (namespace k8s.io) leaves its parent cgroup behind; rmdir fails while it is in use."""
    for controller in Path("/sys/fs/cgroup").glob("*"):
        group = controller / name
        with contextlib.suppress(OSError):
            if group.is_dir():
                for child in sorted(group.iterdir(), reverse=True):
                    if child.is_dir():
                        child.rmdir()
                group.rmdir()


def node_ready(node: dict[str, Any] | None) -> bool:
    if not node:
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
