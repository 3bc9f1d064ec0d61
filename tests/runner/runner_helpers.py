"""Real git servers on loopback and a real ``huskies-agent run-story`` process, for the runner tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
STORY_ID = "42_add_widget"
STORY_TEXT = """# Story 42: add a widget

As a user I want a widget.

## Acceptance criteria
- [ ] the widget exists
"""
FAKE_CLAUDE = HERE / "fake_claude.py"
GIT_TIMEOUT = 60


def git(*args: str, cwd: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False,
        env=dict(env) if env is not None else None,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop_process_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # forked per-connection children


def make_story_repo(
    bare: Path, files: Mapping[str, str], *, branch: str = "main", message: str = "initial",
) -> str:
    """Create bare repo ``bare`` holding one commit with ``files`` on ``branch``; returns its sha."""
    git("init", "-q", "--bare", "-b", branch, str(bare))
    work = bare.parent / (bare.name + ".seed")
    git("init", "-q", "-b", branch, str(work))
    for rel, text in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git("add", "-A", cwd=work)
    git("-c", "user.name=seed", "-c", "user.email=seed@example.invalid", "commit", "-q", "-m", message, cwd=work)
    git("push", "-q", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def install_hook(bare: Path, name: str, body: str) -> None:
    """A server-side hook written in Python (``body`` runs with ``sys``/``os`` imported)."""
    hook = bare / "hooks" / name
    hook.write_text(f"#!{sys.executable}\nimport os, sys\n{body}\n")
    hook.chmod(0o755)


@dataclass
class StoryRepo:
    name: str
    url: str
    bare: Path
    main_sha: str


@dataclass
class GitDaemon:
    """``git daemon`` serving ``root`` over git:// on loopback, with pushes enabled."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
                 "--informative-errors", f"--base-path={self.root}", "--listen=127.0.0.1",
                 f"--port={self.port}", str(self.root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                wait_for_port(self.port, timeout=5)
                return
            except TimeoutError:
                stop_process_group(self.proc)
        raise RuntimeError("git daemon did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


class _GitHttpHandler(BaseHTTPRequestHandler):
    server: GitHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization") or ""))
        if self.server.expected_auth and self.headers.get("Authorization") != self.server.expected_auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                              timeout=GIT_TIMEOUT, check=False)
        raw = done.stdout
        split = raw.find(b"\r\n\r\n")
        head, payload = (raw[:split], raw[split + 4:]) if split >= 0 else raw.partition(b"\n\n")[::2]
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitHttpServer(ThreadingHTTPServer):
    """``git http-backend`` behind HTTP Basic auth on loopback."""

    daemon_threads = True

    def __init__(self, root: Path, expected_auth: str) -> None:
        super().__init__(("127.0.0.1", 0), _GitHttpHandler)
        self.root = root
        self.expected_auth = expected_auth
        self.requests: list[tuple[str, str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @staticmethod
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def __enter__(self) -> GitHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@dataclass
class RunnerRun:
    returncode: int
    stdout: str
    stderr: str
    termination: str
    workdir: Path
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def all_output(self) -> str:
        return self.stdout + self.stderr + self.termination


def base_env(tmp: Path) -> dict[str, str]:
    """A clean environment for the runner: no inherited credentials or Claude variables."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": str(tmp / "home"),
        "HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE),
        "HUSKIES_AGENT_TIMEOUT_SECONDS": "60",
        "HUSKIES_GIT_TIMEOUT_SECONDS": "60",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


_counter = 0


def runner_command(
    *, story_id: str | None, stage: str | None, repo_url: str | None, base_branch: str | None = "main",
    epoch: str | int | None = 1, node: str | None = "node-a",
) -> list[str]:
    cmd = [sys.executable, "-m", "huskies_agent", "--log-format", "json", "run-story"]
    for flag, value in (("--story-id", story_id), ("--stage", stage), ("--repo-url", repo_url),
                        ("--base-branch", base_branch), ("--epoch", epoch), ("--node", node)):
        if value is None:
            continue
        # The operator passes "--flag VALUE"; a value starting with "-" needs "--flag=VALUE" for argparse.
        cmd += [f"{flag}={value}"] if str(value).startswith("-") else [flag, str(value)]
    return cmd


def prepare_run(tmp: Path, env: Mapping[str, str] | None, workdir: Path | None) -> tuple[dict[str, str], Path]:
    global _counter
    _counter += 1
    workdir = workdir or tmp / f"work{_counter}"
    full_env = base_env(tmp)
    full_env["HUSKIES_WORKDIR"] = str(workdir)
    full_env["HOME"] = str(workdir / "home")
    full_env["HUSKIES_TERMINATION_LOG"] = str(tmp / f"termination-{_counter}.log")
    full_env.update(env or {})
    return full_env, workdir


def run_runner(
    tmp: Path, *, story_id: str | None, stage: str | None = "2_current", repo_url: str | None,
    base_branch: str | None = "main", epoch: str | int | None = 1, node: str | None = "node-a",
    env: Mapping[str, str] | None = None, workdir: Path | None = None, timeout: float = 90,
) -> RunnerRun:
    full_env, workdir = prepare_run(tmp, env, workdir)
    cmd = runner_command(story_id=story_id, stage=stage, repo_url=repo_url, base_branch=base_branch,
                         epoch=epoch, node=node)
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    term_path = Path(full_env["HUSKIES_TERMINATION_LOG"])
    termination = term_path.read_text() if term_path.exists() else ""
    run = RunnerRun(done.returncode, done.stdout, done.stderr, termination, workdir)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if lines:
        with contextlib.suppress(ValueError):
            run.result = json.loads(lines[-1])
    return run


def remote_branches(url: str) -> dict[str, str]:
    out = git("ls-remote", "--heads", url)
    found = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        found[ref.removeprefix("refs/heads/")] = sha
    return found


def clone_branch(url: str, branch: str, dest: Path) -> Path:
    git("clone", "-q", "--branch", branch, url, str(dest))
    return dest


def trailers(repo: Path, rev: str = "HEAD") -> dict[str, str]:
    out = git("show", "-s", "--format=%(trailers:only,unfold)", rev, cwd=repo)
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key:
            found[key.strip()] = value.strip()
    return found


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
