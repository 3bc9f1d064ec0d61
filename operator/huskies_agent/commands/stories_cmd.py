"""``huskies-agent stories``: list and edit the stories held by a rendezvous.

Each invocation connects, syncs, makes its edit, waits until the rendezvous
confirms it holds the edit, and exits. Exit status: 0 done, 1 failed (unreachable
rendezvous, unknown story, unconfirmed edit), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import describe

if TYPE_CHECKING:
    from huskies_agent.pipeline.document import PipelineDoc

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A failure to report to the user as ``error: <message>``."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("HUSKIES_RENDEZVOUS_URL", ""),
        help="rendezvous URL, e.g. ws://127.0.0.1:3001/crdt-sync (default: $HUSKIES_RENDEZVOUS_URL)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("HUSKIES_RENDEZVOUS_TOKEN", ""),
        help="bearer token (default: $HUSKIES_RENDEZVOUS_TOKEN)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for the sync and for the confirmation of an edit (default 10)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="print every story as a table")
    show = actions.add_parser("show", help="print one story")
    show.add_argument("story_id")
    add = actions.add_parser("add", help="create a story")
    add.add_argument("story_id")
    add.add_argument("--stage", default=stages.BACKLOG, choices=stages.ALL_STAGES)
    add.add_argument("--name", default="")
    add.add_argument("--agent", default="")
    add.add_argument("--depends-on", default="", help="comma-separated story ids")
    move = actions.add_parser("move", help="move a story to another stage")
    move.add_argument("story_id")
    move.add_argument("stage", choices=stages.ALL_STAGES)
    block = actions.add_parser("block", help="block a story (no node will work on it)")
    block.add_argument("story_id")
    unblock = actions.add_parser("unblock", help="unblock a story and reset its retry count")
    unblock.add_argument("story_id")


def run(args: argparse.Namespace) -> int:
    if not args.url:
        print("error: no rendezvous URL (use --url or set HUSKIES_RENDEZVOUS_URL)", file=sys.stderr)
        return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # The command reports failures itself; keep the client's retry chatter out.
        logging.getLogger("huskies_agent.sync").setLevel(logging.CRITICAL)
    try:
        output = asyncio.run(_run(args))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


async def _run(args: argparse.Namespace) -> str:
    from huskies_agent.pipeline.document import PipelineDoc
    from huskies_agent.sync.client import RendezvousClient, RendezvousUnavailable

    doc = PipelineDoc()
    try:
        client = RendezvousClient(
            doc, args.url, token=args.token, max_failures=1, open_timeout=args.timeout, ping_interval=None
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    async with client:
        try:
            await client.wait_synced(args.timeout)
        except RendezvousUnavailable as exc:
            raise CommandError(str(exc)) from None
        except TimeoutError:
            raise CommandError(f"no sync with the rendezvous at {args.url} within {args.timeout:g} s") from None
        output, edited = _act(doc, args)
        if edited and not await client.confirm(args.timeout):
            raise CommandError(
                f"the rendezvous at {args.url} did not confirm the edit within {args.timeout:g} s"
                " (it may or may not have been applied)"
            )
    return output


def _act(doc: PipelineDoc, args: argparse.Namespace) -> tuple[str, bool]:
    """Do the action on the synced document: (text to print, whether the document changed)."""
    from huskies_agent.pipeline.document import StoryNotFound
    from huskies_agent.pipeline.model import parse_depends_on, story_id_problem

    action: str = args.action
    if action == "list":
        return format_table(doc), False
    story_id: str = args.story_id
    if action == "add":
        problem = story_id_problem(story_id)
        if problem is not None:
            raise CommandError(f"invalid story id {story_id!r}: {problem}")
        try:
            doc.add_story(
                story_id, stage=args.stage, name=args.name, agent=args.agent,
                depends_on=parse_depends_on(args.depends_on),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return f"added {story_id} in {args.stage}", True
    if action == "show":
        return format_story(doc, story_id), False
    if doc.story(story_id) is None:
        reason = doc.malformed.get(story_id)
        raise CommandError(f"story {story_id!r} is malformed: {reason}" if reason else f"no story {story_id!r}")
    # A person's edits are stage moves of a writer of their own (above every epoch, so
    # they fence any running claim) and the plain ``blocked`` flag; see docs/claims.md.
    writer = doc.human_writer()
    try:
        if action == "move":
            doc.move(story_id, args.stage, writer=writer)
            return f"moved {story_id} to {args.stage}", True
        if action == "block":
            doc.set_blocked(story_id, True, writer=writer)
            return f"blocked {story_id}", True
        if action == "unblock":
            doc.set_blocked(story_id, False, reset_retries=True, writer=writer)
            return f"unblocked {story_id} (retries reset)", True
    except StoryNotFound:
        raise CommandError(f"no story {story_id!r}") from None
    raise CommandError(f"unknown action {action!r}")


def format_table(doc: PipelineDoc) -> str:
    """Every story, ordered by stage then id, as an aligned text table."""
    header = ("ID", "STAGE", "BLOCKED", "RETRIES", "CLAIMED BY", "EPOCH", "NAME")
    order = {stage: index for index, stage in enumerate(stages.ALL_STAGES)}
    stories = sorted(doc.stories.values(), key=lambda s: (order.get(s.stage, 99), s.story_id))
    rows: list[Sequence[str]] = [header]
    for story in stories:
        rows.append((
            story.story_id, story.stage, "yes" if story.blocked else "no", str(story.retry_count),
            story.claimed_by or "-", str(story.epoch), story.name,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]
    lines = [line.rstrip() for line in lines]
    summary = f"{len(stories)} stor{'y' if len(stories) == 1 else 'ies'}"
    quarantined = [f"QUARANTINED  {describe(key)}: {reason}" for key, reason in sorted(doc.malformed.items())]
    if quarantined:
        summary += f", {len(quarantined)} quarantined (never worked on; see the reasons above)"
    return "\n".join([*lines, *quarantined, summary])


def format_story(doc: PipelineDoc, story_id: str) -> str:
    story = doc.story(story_id)
    if story is None:
        reason = doc.malformed.get(story_id)
        raise CommandError(f"story {story_id!r} is malformed: {reason}" if reason else f"no story {story_id!r}")
    claim = story.claim
    fields = [
        ("id", story.story_id),
        ("name", story.name),
        ("stage", story.stage),
        ("agent", story.agent or "-"),
        ("blocked", "yes" if story.blocked else "no"),
        ("retries", str(story.retry_count)),
        ("depends on", ", ".join(story.depends_on) or "-"),
        ("claimed by", story.claimed_by or "-"),
        ("epoch", str(story.epoch)),
        ("claimed at", f"{claim.at:.3f}" if claim and claim.held else "-"),
        ("last error", story.last_error or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in fields)
