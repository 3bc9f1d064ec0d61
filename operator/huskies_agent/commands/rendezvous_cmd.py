"""``huskies-agent rendezvous``: serve one pipeline document at ``/crdt-sync``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from huskies_agent.sync.limits import FRAME_OVERHEAD, ServerLimits
from huskies_agent.sync.store import SYNCHRONOUS_MODES

log = logging.getLogger("huskies_agent.rendezvous")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3001, help="port to listen on (default 3001)")
    parser.add_argument(
        "--db", type=Path, default=None,
        help="SQLite file holding the document (created if missing); without it nothing is persisted",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", default="", help="require 'Authorization: Bearer TOKEN' from clients")
    auth.add_argument("--token-file", type=Path, default=None, help="read the required token from a file")
    parser.add_argument(
        "--max-size", type=int, default=64 * 2**20,
        help="largest frame accepted from a client, in bytes (default 64 MiB)",
    )
    parser.add_argument(
        "--synchronous", choices=SYNCHRONOUS_MODES, default="FULL",
        help="SQLite synchronous mode: FULL (default) puts every confirmed write on disk before the "
        "confirmation (survives a power cut); NORMAL is faster but may lose the last confirmed "
        "writes in a power cut (bench/bench_store.py prints the difference)",
    )
    parser.add_argument(
        "--compact-every", type=int, default=1000,
        help="compact the stored updates into one snapshot after this many (default 1000)",
    )
    parser.add_argument(
        "--compact-interval", type=float, default=60.0,
        help="also compact every this many seconds when updates were stored (default 60)",
    )
    limits = parser.add_argument_group(
        "limits",
        "Each bounds what clients can make the server hold. A refusal is logged with its reason, "
        "counted in huskies_rendezvous_refused_total{reason} (GET /metrics) and told to the client "
        "as a close code. Memory stays below about document + connections x (outbox + document).",
    )
    defaults = ServerLimits()
    limits.add_argument(
        "--max-document-bytes", type=int, default=None,
        help="largest encoded document; a write that would pass it is refused before it is applied "
        f"(close 1008) and the document stays usable (default {defaults.max_document_bytes}, or "
        f"--max-size minus {FRAME_OVERHEAD} when smaller: the whole document must fit in one frame)",
    )
    limits.add_argument(
        "--max-update-bytes", type=int, default=None,
        help=f"largest live update from a client (close 1009; default {defaults.max_update_bytes}, "
        "or the document limit when smaller)",
    )
    limits.add_argument(
        "--max-outbox-bytes", type=int, default=defaults.max_outbox_bytes,
        help="bytes queued for one client that reads too slowly before it is dropped "
        f"(close 1013; default {defaults.max_outbox_bytes})",
    )
    limits.add_argument(
        "--max-writes-per-second", type=float, default=defaults.max_writes_per_second,
        help="updates one client may send per second; faster clients are read more slowly "
        f"(counted in huskies_rendezvous_throttled_total; default {defaults.max_writes_per_second:g})",
    )
    limits.add_argument(
        "--write-burst", type=int, default=defaults.write_burst,
        help=f"updates a client may send at once before its rate applies (default {defaults.write_burst})",
    )
    limits.add_argument(
        "--max-connections", type=int, default=defaults.max_connections,
        help=f"clients served at once; more get HTTP 503 (default {defaults.max_connections})",
    )
    limits.add_argument(
        "--max-value-depth", type=int, default=defaults.max_value_depth,
        help="deepest nesting of lists/objects in one value of an update (close 1008; "
        f"default {defaults.max_value_depth})",
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve wss:// with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert (PEM)")
    parser.add_argument(
        "--ping-interval", type=float, default=20.0,
        help="seconds between keepalive pings; a client that misses one is dropped (0: off)",
    )


def run(args: argparse.Namespace) -> int:
    token: str = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            log.error("cannot read the token file %s: %s", args.token_file, exc)
            return 2
        if not token:
            log.error("the token file %s is empty", args.token_file)
            return 2
    if args.max_size < 1024:
        log.error("--max-size must be at least 1024 bytes")
        return 2
    problem = _limits(args).problem(args.max_size)
    if problem is not None:
        log.error("invalid limits: %s", problem)
        return 2
    context: ssl.SSLContext | None = None
    if args.tls_cert is not None or args.tls_key is not None:
        if args.tls_cert is None:
            log.error("--tls-key needs --tls-cert")
            return 2
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load the TLS certificate %s: %s", args.tls_cert, exc)
            return 2
    try:
        return asyncio.run(_serve(args, token, context))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.host, args.port, exc)
        return 1


async def _serve(args: argparse.Namespace, token: str, context: ssl.SSLContext | None) -> int:
    from huskies_agent.sync.server import RendezvousServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = RendezvousServer(
        args.db,
        host=args.host,
        port=args.port,
        token=token,
        max_size=args.max_size,
        ping_interval=args.ping_interval or None,
        compact_every=args.compact_every,
        compact_interval=args.compact_interval,
        limits=_limits(args),
        synchronous=args.synchronous,
        ssl_context=context,
    )
    async with server:
        await stop.wait()
        log.info("stopping the rendezvous (%d clients connected)", server.clients)
    log.info("rendezvous stopped")
    return 0


def _limits(args: argparse.Namespace) -> ServerLimits:
    defaults = ServerLimits()
    document = args.max_document_bytes
    if document is None:
        document = min(defaults.max_document_bytes, args.max_size - FRAME_OVERHEAD)
    update = args.max_update_bytes if args.max_update_bytes is not None else min(defaults.max_update_bytes, document)
    return ServerLimits(
        max_document_bytes=document,
        max_update_bytes=update,
        max_outbox_bytes=args.max_outbox_bytes,
        max_writes_per_second=args.max_writes_per_second,
        write_burst=args.write_burst,
        max_connections=args.max_connections,
        max_value_depth=args.max_value_depth,
    )
