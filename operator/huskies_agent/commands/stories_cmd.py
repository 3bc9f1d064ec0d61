"""``huskies-agent stories``: list and edit the stories held by a rendezvous.

Each invocation connects (URL and token as the operator finds them, see ``connect``),
syncs, makes its edit, waits until the rendezvous confirms it holds the edit, and exits.
Exit status: 0 done, 1 failed (unreachable rendezvous, unknown story, unconfirmed edit),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from huskies_agent.commands import views
from huskies_agent.commands.connect import (
    CommandError,
    add_connection_options,
    confirm,
    connection_parent,
    run_command,
    synced,
    target_from,
)
from huskies_agent.pipeline import stages

if TYPE_CHECKING:
    from huskies_agent.pipeline.document import PipelineDoc

OUTPUTS = [output.value for output in views.Output]


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                        help="table (default), json or yaml; times are ISO 8601 UTC")


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    late = [connection_parent()]
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="print the stories (filters: --stage, --blocked)", parents=late)
    listing.add_argument("--stage", action="append", choices=stages.ALL_STAGES, default=[],
                         help="only stories in this stage (repeat for several)")
    listing.add_argument("--blocked", action="store_true", help="only blocked stories")
    _output_option(listing)
    show = actions.add_parser("show", help="print one story", parents=late)
    show.add_argument("story_id")
    _output_option(show)
    add = actions.add_parser("add", help="create a story", parents=late)
    add.add_argument("story_id")
    add.add_argument("--stage", default=stages.BACKLOG, choices=stages.ALL_STAGES)
    add.add_argument("--name", default="")
    add.add_argument("--agent", default="")
    add.add_argument("--depends-on", default="", help="comma-separated story ids")
    move = actions.add_parser("move", help="move a story to another stage", parents=late)
    move.add_argument("story_id")
    move.add_argument("stage", choices=stages.ALL_STAGES)
    block = actions.add_parser("block", help="block a story (no node will work on it)", parents=late)
    block.add_argument("story_id")
    unblock = actions.add_parser("unblock", help="unblock a story and reset its retry count", parents=late)
    unblock.add_argument("story_id")


def run(args: argparse.Namespace) -> int:
    return run_command(_run, args)


async def _run(args: argparse.Namespace) -> str:
    target = target_from(args)
    async with synced(target, args.timeout) as (doc, client):
        output, edited = act(doc, args, now=time.time())
        if edited:
            await confirm(client, target, args.timeout)
    return output


def act(doc: PipelineDoc, args: argparse.Namespace, *, now: float) -> tuple[str, bool]:
    """Do the action on the synced document: (text to print, whether the document changed)."""
    from huskies_agent.pipeline.document import StoryNotFound
    from huskies_agent.pipeline.model import parse_depends_on, story_id_problem

    action: str = args.action
    if action == "list":
        return render_list(doc, views.StoryFilter(frozenset(args.stage), args.blocked),
                           views.Output(args.output), now), False
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
        return render_story(doc, story_id, views.Output(args.output), now), False
    _require(doc, story_id)
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


def _require(doc: PipelineDoc, story_id: str) -> None:
    if doc.story(story_id) is None:
        reason = doc.malformed.get(story_id)
        raise CommandError(f"story {story_id!r} is malformed: {reason}" if reason else f"no story {story_id!r}")


def render_list(doc: PipelineDoc, keep: views.StoryFilter, output: views.Output, now: float) -> str:
    chosen = views.select(doc.stories.values(), keep)
    # Quarantined entries have no stage or flag to filter on: listed only when nothing is filtered.
    quarantined = {} if keep.active else dict(doc.malformed)
    if output is views.Output.TABLE:
        return views.stories_table(chosen, quarantined, now)
    return views.dump(views.stories_document(chosen, quarantined, now), output)


def render_story(doc: PipelineDoc, story_id: str, output: views.Output, now: float) -> str:
    _require(doc, story_id)
    story = doc.story(story_id)
    assert story is not None
    if output is views.Output.TABLE:
        return views.story_text(story, now)
    return views.dump(views.story_record(story, now), output)
