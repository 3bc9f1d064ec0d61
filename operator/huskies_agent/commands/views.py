"""Pure formatting for the ``stories``, ``nodes`` and ``release`` commands: filters, records, tables.

Times are shown as ISO 8601 UTC with an age (``2026-12-02T11:45:03Z (5m12s ago)``). Every
time in the document is the *writer's* wall clock (a claim's ``at``, a node's
``last_seen``): the age is measured against this machine's clock, so it is shown for people
and never used to decide anything (docs/claims.md, Liveness).
"""

from __future__ import annotations

import datetime
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import NodePresence, Story, describe


class Output(enum.Enum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def iso_utc(timestamp: float) -> str:
    """``2026-12-02T11:45:03Z``; ``""`` for a missing (0), negative or non-finite time."""
    if not math.isfinite(timestamp) or timestamp <= 0:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def age(seconds: float) -> str:
    """A duration the way kubectl prints ages: ``45s``, ``3m12s``, ``2h5m``, ``3d4h``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(abs(seconds))
    if s < 60:
        text = f"{s}s"
    elif s < 3600:
        text = f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    elif s < 86400:
        text = f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    else:
        text = f"{s // 86400}d{s % 86400 // 3600}h" if s % 86400 // 3600 else f"{s // 86400}d"
    return text


def short_age(timestamp: float, now: float) -> str:
    """A table cell: ``5m12s``, ``-3s`` for a writer's clock ahead of ours, ``-`` for no time."""
    if not iso_utc(timestamp):
        return "-"
    delta = now - timestamp
    return age(delta) if delta >= 0 else "-" + age(delta)


def ago(timestamp: float, now: float) -> str:
    """The age of a writer's timestamp against ``now``: ``5m12s ago``, or ``3s ahead`` for a clock ahead."""
    if not iso_utc(timestamp):
        return ""
    delta = now - timestamp
    return f"{age(delta)} ago" if delta >= 0 else f"{age(delta)} ahead"


def when(timestamp: float, now: float) -> str:
    """``2026-12-02T11:45:03Z (5m12s ago)``, or ``-`` when there is no time."""
    stamp = iso_utc(timestamp)
    return f"{stamp} ({ago(timestamp, now)})" if stamp else "-"


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a peer's value cannot forge a line of a table."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Aligned columns, two spaces apart, trailing blanks removed; cells are made printable."""
    body = [list(header), *([printable(str(cell)) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in body]


def dump(data: Any, output: Output) -> str:
    if output is Output.JSON:
        return json.dumps(data, indent=2, ensure_ascii=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


# ---------------------------------------------------------------------- stories

@dataclass(frozen=True)
class StoryFilter:
    """``--stage`` (any of these; empty: all) and ``--blocked`` (only blocked stories)."""

    stages: frozenset[str] = frozenset()
    blocked: bool = False

    @property
    def active(self) -> bool:
        return bool(self.stages) or self.blocked

    def keeps(self, story: Story) -> bool:
        if self.stages and story.stage not in self.stages:
            return False
        return story.blocked or not self.blocked


_STAGE_ORDER = {stage: index for index, stage in enumerate(stages.ALL_STAGES)}


def select(stories: Iterable[Story], keep: StoryFilter) -> list[Story]:
    """The stories ``keep`` lets through, ordered by stage then id."""
    chosen = [story for story in stories if keep.keeps(story)]
    return sorted(chosen, key=lambda s: (_STAGE_ORDER.get(s.stage, 99), s.story_id))


def story_record(story: Story, now: float) -> dict[str, Any]:
    """One story for ``-o json|yaml``: the resolved state, times in ISO 8601 UTC."""
    claim = story.claim
    return {
        "id": story.story_id,
        "name": story.name,
        "stage": story.stage,
        "agent": story.agent,
        "blocked": story.blocked,
        "retries": story.retry_count,
        "depends_on": list(story.depends_on),
        "epoch": story.epoch,
        "claim": None if claim is None else {
            "node": claim.node,
            "epoch": claim.epoch,
            "stage": claim.stage,
            "claimed_at": iso_utc(claim.at) or None,
            "age": ago(claim.at, now) or None,
        },
        "moved_by": story.moved_by,
        "last_error": story.last_error,
    }


def stories_document(stories: Sequence[Story], quarantined: Mapping[str, str], now: float) -> dict[str, Any]:
    return {
        "stories": [story_record(story, now) for story in stories],
        "quarantined": [{"key": key, "reason": reason} for key, reason in sorted(quarantined.items())],
    }


def stories_table(stories: Sequence[Story], quarantined: Mapping[str, str], now: float) -> str:
    """Every story as a row; quarantined entries as ``QUARANTINED`` lines; a count last."""
    header = ("ID", "STAGE", "BLOCKED", "RETRIES", "CLAIMED BY", "EPOCH", "CLAIMED", "NAME")
    rows = [
        (story.story_id, story.stage, "yes" if story.blocked else "no", str(story.retry_count),
         story.claimed_by or "-", str(story.epoch),
         short_age(story.claim.at, now) if story.claim else "-", story.name)
        for story in stories
    ]
    lines = table(header, rows)
    lines += [f"QUARANTINED  {describe(key)}: {reason}" for key, reason in sorted(quarantined.items())]
    summary = f"{len(stories)} stor{'y' if len(stories) == 1 else 'ies'}"
    if quarantined:
        summary += f", {len(quarantined)} quarantined (never worked on; see the reasons above)"
    return "\n".join([*lines, summary])


def story_text(story: Story, now: float) -> str:
    """One story as ``field  value`` lines."""
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
        ("claimed at", when(claim.at, now) if claim else "-"),
        ("moved by", story.moved_by or "-"),
        ("last error", story.last_error or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {printable(value)}" for name, value in fields)


# ---------------------------------------------------------------------- nodes

class Seen(enum.Enum):
    """What this command saw of a node while it watched (never a clock comparison)."""

    ALIVE = "alive"  # its presence entry changed while we watched: it is writing now
    DEAD = "dead"  # silent for a whole claim timeout of watching: what the operators would judge
    SILENT = "silent"  # nothing during a watch shorter than that: cannot tell


@dataclass(frozen=True)
class NodeView:
    """A node as the ``nodes`` command shows it: its presence entry plus what was observed."""

    node_id: str
    presence: NodePresence | None
    seen: Seen
    silent_for: float
    claims: int


def verdict(heard: bool, silent_for: float, claim_timeout: float) -> Seen:
    """Dead only after a whole claim timeout without news while watching (``claims.Liveness``' rule)."""
    if silent_for >= claim_timeout:
        return Seen.DEAD
    return Seen.ALIVE if heard else Seen.SILENT


def node_views(
    nodes: Mapping[str, NodePresence], holders: Iterable[str], heard: Iterable[str],
    silent_for: Mapping[str, float], *, claim_timeout: float,
) -> list[NodeView]:
    """Every node with a presence entry or a held claim, with its verdict from the watch.

    ``heard``: nodes whose presence changed while the command watched (after the initial
    sync); ``silent_for``: seconds without news of each node since the later of the watch's
    start and its last change, on this machine's monotonic clock (``Liveness.silent_for``).
    """
    held: dict[str, int] = {}
    for node in holders:
        held[node] = held.get(node, 0) + 1
    heard_set = set(heard)
    views = []
    for node_id in sorted(set(nodes) | set(held)):
        silent = silent_for.get(node_id, 0.0)
        views.append(NodeView(node_id, nodes.get(node_id), verdict(node_id in heard_set, silent, claim_timeout),
                              silent, held.get(node_id, 0)))
    return views


def _extra(presence: NodePresence | None, key: str) -> str:
    """A plain value a node added to its presence entry ("" when absent or not plain)."""
    if presence is None:
        return ""
    value = presence.extra.get(key)
    count = _count(value)
    if count is not None:
        return str(count)
    return "" if value is None or isinstance(value, dict | list) else str(value)


def _count(value: object) -> int | None:
    """A whole number (the document stores numbers as floats), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def node_record(view: NodeView, now: float) -> dict[str, Any]:
    presence = view.presence
    running = _count(presence.extra.get("running")) if presence is not None else None
    return {
        "node": view.node_id,
        "seen": view.seen.value,
        "cluster": _extra(presence, "cluster") or None,
        "free": presence.capacity if presence is not None else None,
        "running": running,
        "claims": view.claims,
        "paused": _extra(presence, "paused") or None,
        "silent_seconds": round(view.silent_for, 1),
        "last_seen": (iso_utc(presence.last_seen) or None) if presence is not None else None,
        "last_seen_age": (ago(presence.last_seen, now) or None) if presence is not None else None,
        "address": (presence.address or None) if presence is not None else None,
    }


def nodes_document(views: Sequence[NodeView], *, watched: float, claim_timeout: float, now: float) -> dict[str, Any]:
    return {
        "watched_seconds": round(watched, 1),
        "claim_timeout_seconds": claim_timeout,
        "nodes": [node_record(view, now) for view in views],
    }


def seen_text(view: NodeView) -> str:
    if view.seen is Seen.ALIVE:
        return "alive" if view.silent_for < 1 else f"alive (then silent {age(view.silent_for)})"
    if view.seen is Seen.DEAD:
        return f"dead (silent {age(view.silent_for)})"
    return f"silent {age(view.silent_for)}"


def nodes_table(views: Sequence[NodeView], *, watched: float, claim_timeout: float, now: float) -> str:
    header = ("NODE", "SEEN", "CLUSTER", "FREE", "RUNNING", "CLAIMS", "PAUSED", "LAST SEEN (ITS CLOCK)")
    rows = []
    for view in views:
        presence = view.presence
        rows.append((
            view.node_id, seen_text(view), _extra(presence, "cluster") or "-",
            "-" if presence is None or presence.capacity is None else str(presence.capacity),
            _extra(presence, "running") or "-", str(view.claims), _extra(presence, "paused") or "-",
            when(presence.last_seen, now) if presence is not None else "- (no presence entry)",
        ))
    lines = table(header, rows)
    lines.append(f"{len(views)} node{'' if len(views) == 1 else 's'}, watched {watched:.1f} s after the sync. "
                 "SEEN alive: its presence changed while watched; silent: no change seen (nodes write every")
    lines.append(f"presence interval, 30 s by default); dead: silent for a whole claim timeout ({claim_timeout:g} s). "
                 "LAST SEEN is written by the node, by its own clock.")
    return "\n".join(lines)
