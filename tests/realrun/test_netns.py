"""The node's network namespace: isolated from the host, except through the loopback forwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from tests.realrun.netns import Forward, NetNs

CONNECT = """
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
except OSError as exc:
    print("refused", type(exc).__name__)
    sys.exit(0)
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""


@pytest.fixture
def echo_server() -> Iterator[int]:
    """An upper-casing echo server on the host's loopback."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(100):
                    data += chunk
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def netns() -> Iterator[NetNs]:
    ns = NetNs(prefix="huskies-test")
    try:
        yield ns
    finally:
        ns.close()


def _connect_from(ns: NetNs, port: int) -> str:
    proc = subprocess.run(
        ns.argv([sys.executable, "-c", CONNECT, str(port)]), capture_output=True, text=True, timeout=30, check=True,
    )
    return proc.stdout.strip()


def test_host_loopback_is_unreachable_without_a_forward(netns: NetNs, echo_server: int) -> None:
    assert _connect_from(netns, echo_server).startswith("refused")


def test_forward_carries_both_directions(netns: NetNs, echo_server: int) -> None:
    forward = Forward(netns, echo_server)
    try:
        assert _connect_from(netns, echo_server) == "PING"
        assert _connect_from(netns, echo_server) == "PING"  # and keeps accepting
    finally:
        forward.close()
    assert _connect_from(netns, echo_server).startswith("refused")


def test_close_removes_the_namespace() -> None:
    ns = NetNs(prefix="huskies-test")
    assert ns.path.exists()
    ns.close()
    assert not ns.path.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert ns.name not in listed
