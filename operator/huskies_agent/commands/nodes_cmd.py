"""``huskies-agent nodes``: the build nodes of the pipeline, as this command sees them.

Each node writes a presence entry (free slots, running, cluster, pause, its own wall-clock
``last_seen``) every ``presence_interval_seconds``. Whether a node is alive is never read from
``last_seen`` (that would compare two machines' clocks; docs/claims.md, Liveness). Instead
the command syncs, then *watches* for ``--watch`` seconds with the operator's own rule
(:class:`claims.Liveness` on this machine's monotonic clock):

* ``alive``: its presence entry changed while we watched, so it is writing now;
* ``silent``: no change seen, in a watch shorter than the claim timeout: cannot tell (a
  watch shorter than the node's presence interval usually sees nothing);
* ``dead``: no change for a whole claim timeout of watching: what an operator would judge.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from huskies_agent.commands import views
from huskies_agent.commands.connect import (
    CommandError,
    UsageError,
    add_connection_options,
    run_command,
    synced,
    target_from,
)
from huskies_agent.pipeline.model import describe

if TYPE_CHECKING:
    from huskies_agent.pipeline.document import Changes, PipelineDoc
    from huskies_agent.sync.client import RendezvousClient

DEFAULT_WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class Observation:
    """What a watch saw: nodes heard, seconds without news per node, how long it watched, and
    whether the link to the rendezvous dropped meanwhile (then silence says nothing)."""

    heard: frozenset[str]
    silent_for: Mapping[str, float]
    watched: float
    cut_off: bool = False


async def observe(doc: PipelineDoc, client: RendezvousClient, seconds: float, claim_timeout: float) -> Observation:
    """Watch presence changes for ``seconds`` after the sync, on this machine's monotonic clock."""
    from huskies_agent.claims import Liveness

    liveness = Liveness(claim_timeout)
    heard: set[str] = set()

    def on_change(changes: Changes) -> None:
        # Only a change received from a peer says that peer is alive (as in the engine).
        if changes.remote:
            now = time.monotonic()
            for node in changes.nodes:
                liveness.heard(node, now)
                heard.add(node)

    cut_off = False

    def on_state(connected: bool) -> None:
        nonlocal cut_off
        if not connected:
            cut_off = True
            liveness.link_down()

    started = time.monotonic()
    liveness.link_up(started)
    remove = doc.add_listener(on_change)
    unwatch = client.on_state(on_state)
    try:
        await asyncio.sleep(max(0.0, seconds))
    finally:
        remove()
        unwatch()
    now = time.monotonic()
    cut_off = cut_off or not client.synced
    known = set(doc.nodes) | {story.claimed_by for story in doc.stories.values() if story.claimed_by}
    silent = {node: 0.0 if cut_off else liveness.silent_for(node, now) or 0.0 for node in known}
    return Observation(frozenset(heard), silent, now - started, cut_off)


def add_watch_option(parser: argparse.ArgumentParser, default: float | None, help_text: str) -> None:
    parser.add_argument("--watch", type=float, default=default, metavar="SECONDS", help=help_text)
    parser.add_argument("--claim-timeout", type=float, default=None, metavar="SECONDS",
                        help="silence that makes a node dead (default: the settings' claim_timeout_seconds, 600)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    add_watch_option(parser, DEFAULT_WATCH_SECONDS,
                     f"seconds to watch for presence changes after the sync (default {DEFAULT_WATCH_SECONDS:g}; "
                     "longer than the nodes' presence interval, 30 s by default, to see every live node)")
    parser.add_argument("-o", "--output", choices=[o.value for o in views.Output], default="table",
                        help="table (default), json or yaml; times are ISO 8601 UTC")


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


async def _run(args: argparse.Namespace) -> str:
    if args.watch < 0:
        raise UsageError("--watch must be 0 or more seconds")
    target = target_from(args)
    claim_timeout = args.claim_timeout or target.claim_timeout
    async with synced(target, args.timeout) as (doc, client):
        seen = await observe(doc, client, args.watch, claim_timeout)
        if seen.cut_off:
            raise CommandError(f"the connection to the rendezvous at {target.url} dropped while watching: "
                               "nothing can be said about the nodes")
        holders = [story.claimed_by for story in doc.stories.values() if story.claimed_by]
        node_list = views.node_views(doc.nodes, holders, seen.heard, seen.silent_for, claim_timeout=claim_timeout)
        now = time.time()
        output = views.Output(args.output)
        if output is views.Output.TABLE:
            text = views.nodes_table(node_list, watched=seen.watched, claim_timeout=claim_timeout, now=now)
            bad = [f"QUARANTINED  {describe(k)}: {r}" for k, r in sorted(doc.malformed_nodes.items())]
            return "\n".join([text, *bad])
        document = views.nodes_document(node_list, watched=seen.watched, claim_timeout=claim_timeout, now=now)
        document["quarantined"] = [{"key": k, "reason": r} for k, r in sorted(doc.malformed_nodes.items())]
        return views.dump(document, output)
