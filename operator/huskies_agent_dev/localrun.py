"""Local processes of a huskies-agent setup: rendezvous and operator as child processes.

Used by the local demo, the benchmarks and the integration tests; each process logs
to a file and is stopped for sure (its whole process group) when done (:class:`~huskies_agent_dev.proc.Proc`).
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from pathlib import Path

from huskies_agent_dev.proc import Proc

__all__ = ["FAST", "Proc", "free_port", "metrics_text", "start_operator", "start_rendezvous", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.1)


def start_rendezvous(log_dir: Path, port: int | None = None, db: Path | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    db = db or log_dir / f"rendezvous-{port}.sqlite"
    proc = Proc(f"rendezvous-{port}", [sys.executable, "-m", "huskies_agent", "--log-format", "text",
                                       "rendezvous", "--host", "127.0.0.1", "--port", str(port), "--db", str(db)],
                log_dir).start()
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, f"ws://127.0.0.1:{port}/crdt-sync"


#: Settings that make the operator react in test time rather than production time.
FAST: dict[str, str] = {
    "HUSKIES_LEASE_DURATION_SECONDS": "3",
    "HUSKIES_LEASE_RENEW_DEADLINE_SECONDS": "2",
    "HUSKIES_LEASE_RETRY_PERIOD_SECONDS": "0.5",
    "HUSKIES_PRESENCE_INTERVAL_SECONDS": "1",
    "HUSKIES_RESYNC_INTERVAL_SECONDS": "1",
    "HUSKIES_RECONNECT_MIN_SECONDS": "0.2",
    "HUSKIES_RECONNECT_MAX_SECONDS": "1",
    "HUSKIES_MAX_CONCURRENT": "50",
    "HUSKIES_BUILD_REQUESTS": '{"cpu": "10m", "memory": "16Mi"}',
    "HUSKIES_BUILD_LIMITS": "{}",
    "HUSKIES_BUILD_IMAGE": "registry.invalid/huskies-agent-runner:test",
    "HUSKIES_BUILD_REPO_URL": "git://127.0.0.1:1/repo.git",
}


def start_operator(
    name: str, *, kubeconfig: str, namespace: str, rendezvous: str, log_dir: Path,
    env: dict[str, str] | None = None, fast: bool = True, log_level: str = "DEBUG",
    python: str = sys.executable, log_format: str = "text",
) -> tuple[Proc, int]:
    """Start ``huskies-agent operator``; ``fast`` applies the test-time settings in FAST."""
    port = free_port()
    full_env = {
        **(FAST if fast else {}),
        "KUBECONFIG": kubeconfig,
        "HUSKIES_RENDEZVOUS_URL": rendezvous,
        "HUSKIES_NAMESPACE": namespace,
        "HUSKIES_METRICS_PORT": str(port),
        "HUSKIES_METRICS_HOST": "127.0.0.1",
        "HUSKIES_REPLICA_ID": f"{name}-replica",
        "HUSKIES_CLUSTER_NAME": name,
        **(env or {}),
    }
    proc = Proc(name, [python, "-m", "huskies_agent", "--log-format", log_format, "--log-level", log_level,
                       "operator"], log_dir, full_env).start()
    return proc, port


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return str(resp.read().decode())
