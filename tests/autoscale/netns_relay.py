"""Run a command in its own network namespace, with the apiserver relayed in through a Unix socket.

Why: Karpenter binds its metrics and health servers to ``:<port>`` (every interface; the address is
hard-coded in ``sigs.k8s.io/karpenter/pkg/operator``). In a fresh network namespace the only
interface is ``lo``, so those listeners are loopback-only and invisible from the host, and they
cannot collide with anything. The command still reaches the control plane:

    host netns:   <sock_dir>/apiserver.sock  --(this process, "outer")-->  127.0.0.1:<apiserver port>
    child netns:  127.0.0.1:<inner port>     --("inner")-->                <sock_dir>/apiserver.sock
                  <sock_dir>/<name>.sock     --("inner")-->                127.0.0.1:<exposed port>

Unix sockets with a path work across network namespaces (the file system is shared), so the
``--expose`` sockets let the host probe e.g. the command's ``/readyz`` without any TCP port.

    python netns_relay.py outer --sock-dir D --apiserver 127.0.0.1:PORT [--inner-port 6443]
                                [--expose health=8081 ...] -- COMMAND ARGS...

``outer`` starts ``unshare --net -- python netns_relay.py inner ...``, which brings ``lo`` up and
starts COMMAND. Each parent kills its child if it dies (``setpriv --pdeathsig KILL``); SIGTERM and
SIGINT are passed down, and both relays keep running until COMMAND has exited (so it can shut down
cleanly); the exit status is COMMAND's. Needs CAP_SYS_ADMIN (root) for ``unshare --net``.
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq on 64-bit Linux: name[16] + flags, padded to 40 bytes


def netns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        answer = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, answer)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _relay_to(open_target: Opener) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await open_target()
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, t_writer), _pump(t_reader, writer))

    return handle


def _tcp(host: str, port: int) -> Opener:
    return lambda: asyncio.open_connection(host, port)


def _unix(path: str) -> Opener:
    return lambda: asyncio.open_unix_connection(path)


def _with_pdeathsig(argv: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


async def _run_child(argv: list[str]) -> int:
    """Start argv, pass SIGTERM/SIGINT on, and return its exit status once it has exited."""
    child = await asyncio.create_subprocess_exec(*_with_pdeathsig(argv), stdin=asyncio.subprocess.DEVNULL)
    loop = asyncio.get_running_loop()

    def forward(sig: int) -> None:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    rc = await child.wait()
    return rc if rc >= 0 else 128 - rc


async def outer(args: argparse.Namespace) -> int:
    sock_dir = Path(args.sock_dir)
    host, _, port = args.apiserver.rpartition(":")
    api_sock = sock_dir / "apiserver.sock"
    api_sock.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(_relay_to(_tcp(host, int(port))), path=str(api_sock))
    inner_argv = [
        "unshare", "--net", "--", sys.executable, os.path.abspath(__file__), "inner",
        "--sock-dir", str(sock_dir), "--inner-port", str(args.inner_port), "--host-netns", netns_id(),
        *[f"--expose={e}" for e in args.expose], "--", *args.command,
    ]
    try:
        return await _run_child(inner_argv)
    finally:
        server.close()
        api_sock.unlink(missing_ok=True)


async def inner(args: argparse.Namespace) -> int:
    if netns_id() == args.host_netns:
        print("netns_relay: not in a new network namespace (unshare --net failed?)", file=sys.stderr)
        return 3
    bring_up_loopback()
    sock_dir = Path(args.sock_dir)
    servers = [await asyncio.start_server(_relay_to(_unix(str(sock_dir / "apiserver.sock"))),
                                          "127.0.0.1", args.inner_port)]
    exposed: list[Path] = []
    for spec in args.expose:
        name, _, port = spec.partition("=")
        path = sock_dir / f"{name}.sock"
        path.unlink(missing_ok=True)
        servers.append(await asyncio.start_unix_server(_relay_to(_tcp("127.0.0.1", int(port))), path=str(path)))
        exposed.append(path)
    try:
        return await _run_child(args.command)
    finally:
        for s in servers:
            s.close()
        for path in exposed:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["outer", "inner"])
    parser.add_argument("--sock-dir", required=True)
    parser.add_argument("--apiserver", default="", help="host:port of the apiserver (outer)")
    parser.add_argument("--inner-port", type=int, default=6443)
    parser.add_argument("--host-netns", default="")
    parser.add_argument("--expose", action="append", default=[], metavar="NAME=PORT")
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("a command is required after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]
    if args.mode == "outer" and not args.apiserver:
        parser.error("outer needs --apiserver")
    return asyncio.run(outer(args) if args.mode == "outer" else inner(args))


if __name__ == "__main__":
    sys.exit(main())
