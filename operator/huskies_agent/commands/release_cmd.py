"""``huskies-agent release NODE``: free a dead node's claims now instead of after the claim timeout.

The claim protocol lets nobody write another node's claim (docs/claims.md). A release is
therefore a person's move, the same write as ``stories move``: for each story whose winning
claim is NODE's, a stage move of this command's own writer to the stage the story is in,
above every epoch. A claim holds only above the winning stage move, so the claim is fenced,
the story is free for any node to claim, and should NODE come back its run is stopped as
``Lost`` and its late completion or push loses. Like any person's move, it restarts the
story's retry count.

The command first watches NODE's presence for ``--watch`` seconds (default: twice the
presence interval of the settings) and refuses when NODE is alive (its presence changed
during the watch) or when the watch was shorter than one presence interval, unless
``--force``. Liveness is judged from what this command receives, never from clocks.
"""

from __future__ import annotations

import argparse
import time

from huskies_agent.commands import views
from huskies_agent.commands.connect import (
    CommandError,
    UsageError,
    add_connection_options,
    confirm,
    run_command,
    synced,
    target_from,
)
from huskies_agent.commands.nodes_cmd import add_watch_option, observe


def refusal(view: views.NodeView, *, watched: float, presence_interval: float, force: bool) -> str:
    """Why ``view``'s claims must not be released ("" to go ahead). ``--force`` overrides."""
    if force:
        return ""
    if view.seen is views.Seen.ALIVE:
        return (f"{view.node_id} is alive: its presence changed during the {watched:g} s watch "
                "(use --force to release a live node's claims)")
    if view.seen is views.Seen.SILENT and watched < presence_interval:
        return (f"watched {view.node_id} for {watched:g} s only, less than one presence interval "
                f"({presence_interval:g} s): it may be alive (use a longer --watch, or --force)")
    return ""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help="the node id whose claims to release (see `huskies-agent nodes`)")
    add_connection_options(parser)
    add_watch_option(parser, None, "seconds to watch the node's presence before releasing "
                                   "(default: twice the settings' presence_interval_seconds, 60)")
    parser.add_argument("--force", action="store_true", help="release even if the node looks alive")
    parser.add_argument("--dry-run", action="store_true", help="say what would be released, write nothing")


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


async def _run(args: argparse.Namespace) -> str:
    target = target_from(args)
    node: str = args.node
    interval = target.presence_interval
    watch = 2 * interval if args.watch is None else args.watch
    if watch < 0:
        raise UsageError("--watch must be 0 or more seconds")
    claim_timeout = args.claim_timeout or target.claim_timeout
    async with synced(target, args.timeout) as (doc, client):
        if not any(story.claimed_by == node for story in doc.stories.values()):
            if node not in doc.nodes:
                raise CommandError(f"no node {node!r}: it has no presence entry and holds no claims")
            return f"{node} holds no claims: nothing to release"
        seen = await observe(doc, client, watch, claim_timeout)
        if seen.cut_off:
            raise CommandError(f"the connection to the rendezvous at {target.url} dropped while watching "
                               f"{node}: cannot tell whether it is alive; nothing released")
        holders = [story.claimed_by for story in doc.stories.values() if story.claimed_by]
        view = next(v for v in views.node_views(doc.nodes, holders, seen.heard, seen.silent_for,
                                                claim_timeout=claim_timeout) if v.node_id == node)
        why = refusal(view, watched=seen.watched, presence_interval=interval, force=args.force)
        if why:
            raise CommandError(why)
        now = time.time()
        presence = doc.nodes.get(node)
        status = (f"{node}: {views.seen_text(view)} over a {seen.watched:.1f} s watch; last seen "
                  f"{views.when(presence.last_seen, now) if presence else '- (no presence entry)'} by its own clock")
        if args.force and view.seen is views.Seen.ALIVE:
            status += " (released anyway: --force)"
        if args.dry_run:
            held = sorted((s for s in doc.stories.values() if s.claimed_by == node), key=lambda s: s.story_id)
            lines = [f"  {s.story_id}  {s.stage}  epoch {s.epoch}" for s in held]
            return "\n".join([status, f"would release {len(held)} stor{'y' if len(held) == 1 else 'ies'}:",
                              *lines])
        released = doc.release_held_by(node)
        await confirm(client, target, args.timeout)
    rows = [(s.story_id, s.stage, f"epoch {s.epoch} -> {s.top_epoch + 1}",
             f"retries {s.retry_count} -> 0" if s.retry_count else "")
            for s in sorted(released.values(), key=lambda s: s.story_id)]
    count = f"{len(rows)} stor{'y' if len(rows) == 1 else 'ies'}"
    return "\n".join([status, f"released {count} (a person's move to its own stage; any node may claim it now):",
                      *("  " + line for line in views.table(("STORY", "STAGE", "EPOCH", "RETRIES"), rows)[1:])])
