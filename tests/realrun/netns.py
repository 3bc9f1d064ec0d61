"""A network namespace made by a test, and loopback forwards from it to the host's loopback.

The real node (containerd, kubelet, its pods) runs inside :class:`NetNs`; nothing in it can reach
the host's network except through :class:`Forward`, which listens on ``127.0.0.1:<port>`` inside
the namespace and connects to ``127.0.0.1:<port>`` on the host (the API server, the registry, the
git server...). The listening socket is made by a thread that enters the namespace with setns(2);
sockets keep the namespace they were made in, so the accepting threads stay in the host's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
_BUFFER = 65536


class NetNsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise NetNsError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


class NetNs:
    """``ip netns add``; :meth:`close` deletes it (and with it every interface inside)."""

    #: The address of the namespace's one non-loopback interface (one end of a veth pair whose both
    #: ends are inside, so packets to it stay inside).
    ADDRESS = "10.251.0.2"

    def __init__(self, prefix: str = "huskies") -> None:
        self.name = f"{prefix}-{secrets.token_hex(3)}"
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            # A default route on it gives the kubelet a non-loopback node IP.
            _ip("-n", self.name, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
            _ip("-n", self.name, "addr", "add", f"{self.ADDRESS}/24", "dev", "node0")
            _ip("-n", self.name, "link", "set", "node0", "up")
            _ip("-n", self.name, "link", "set", "node1", "up")
            _ip("-n", self.name, "route", "add", "default", "dev", "node0")
        except NetNsError:
            self.close()
            raise

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (network only: ``ip netns exec`` would also remount
        /sys, hiding the cgroup mounts runc needs)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def close(self) -> None:
        with contextlib.suppress(NetNsError):
            _ip("netns", "delete", self.name)


def _listen_inside(netns: Path, host: str, port: int) -> socket.socket:
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def enter_and_bind() -> None:  # this thread never leaves the namespace; it ends right after
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            made.append(sock)
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=enter_and_bind, name=f"netns-bind-{port}")
    thread.start()
    thread.join()
    if errors:
        raise NetNsError(f"listen on {host}:{port} inside {netns}: {errors[0]}")
    return made[0]


class Forward:
    """<host>:<port> inside ``netns`` (loopback by default) -> 127.0.0.1:<target_port> on the host."""

    def __init__(self, netns: NetNs, port: int, target_port: int | None = None, host: str = "127.0.0.1") -> None:
        self.port = port
        self.target = ("127.0.0.1", target_port or port)
        self._listener = _listen_inside(netns.path, host, port)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
