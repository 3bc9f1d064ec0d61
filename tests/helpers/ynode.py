"""The Node Yjs stack (``@y/websocket-server``, ``y-websocket``, ``yjs``) for interop tests.

npm installs the pinned packages once into a cache folder outside the repository
(``$HUSKIES_NODE_CACHE`` or ``~/.cache/huskies-agent/node``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

#: Pinned: @y/websocket-server 0.1.2+ needs Yjs v14 pre-releases; stay on Yjs 13.
NODE_PACKAGES = ("@y/websocket-server@0.1.1", "yjs@13", "y-websocket@3", "ws@8")


def node_missing() -> str | None:
    """Why the Node stack cannot be used here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def cache_dir() -> Path:
    configured = os.environ.get("HUSKIES_NODE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "huskies-agent" / "node"


def ensure_node_modules(timeout: float = 240.0) -> Path:
    """Install :data:`NODE_PACKAGES` (once) and return the ``node_modules`` folder."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / ".huskies-packages"
    wanted = json.dumps(NODE_PACKAGES)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted and (directory / "node_modules").is_dir():
            return directory / "node_modules"
        package_json = directory / "package.json"
        if not package_json.exists():
            package_json.write_text(json.dumps({"name": "huskies-agent-interop", "private": True}) + "\n")
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *NODE_PACKAGES],
            cwd=directory, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm install failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        stamp.write_text(wanted)
    return directory / "node_modules"


def wait_for_port(
    host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process exited with status {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def start_node_server(
    node_modules: Path, port: int, log_path: Path, host: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    """Start ``@y/websocket-server`` (no persistence) on ``host:port``; stop it with ``stop``."""
    script = node_modules / "@y" / "websocket-server" / "src" / "server.js"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            ["node", str(script)], cwd=node_modules.parent, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, "HOST": host, "PORT": str(port)},
        )
    try:
        wait_for_port(host, port, proc=proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
