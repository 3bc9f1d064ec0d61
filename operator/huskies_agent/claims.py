"""Claiming policy: pure decisions about which stories this node claims, keeps or frees.

Rules (after huskies' agent mode, with its long-story takeover removed):

* Only stories in ``2_current``, ``3_qa`` or ``4_merge`` are worked on; blocked stories,
  invalid story ids and stories with unmet dependencies are skipped.
* A claim held by a **live** node stands, however old it is. A node is live while its
  presence entry says ``alive`` and was refreshed within the claim timeout.
* A claim held by a dead (or unknown) node is taken over, or released when this node
  has no room, so work moves on.
* Capacity counts every story this node runs or is claiming (pending and running).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import NodePresence, Story, story_id_problem


class Verdict(enum.Enum):
    CLAIM = "claim"  # unclaimed (or released): claim it
    TAKE_OVER = "take_over"  # held by a dead node: claim it
    OURS = "ours"  # we hold the claim
    SKIP = "skip"  # nothing to do for this node


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""

    @property
    def wants_claim(self) -> bool:
        return self.verdict in (Verdict.CLAIM, Verdict.TAKE_OVER)


def is_node_alive(node_id: str, nodes: Mapping[str, NodePresence], now: float, timeout: float) -> bool:
    """A node is alive when its presence says so and is fresher than ``timeout``."""
    presence = nodes.get(node_id)
    return presence is not None and presence.alive and (now - presence.last_seen) < timeout


def unmet_dependencies(story: Story, stories: Mapping[str, Story]) -> list[str]:
    """Dependencies that exist in the pipeline and are not done or archived yet.

    A dependency that is not in the document (evicted after archiving, or never
    existed) does not hold a story back.
    """
    unmet = []
    for dep in story.depends_on:
        other = stories.get(dep)
        if other is not None and other.stage not in stages.FINISHED_STAGES:
            unmet.append(dep)
    return unmet


def decide(
    story: Story,
    *,
    me: str,
    stories: Mapping[str, Story],
    nodes: Mapping[str, NodePresence],
    now: float,
    claim_timeout: float,
) -> Decision:
    """What this node should do about ``story``, ignoring capacity."""
    if not stages.is_active(story.stage):
        return Decision(Verdict.SKIP, f"stage {story.stage} is not worked on")
    holder = story.claimed_by
    if holder == me:
        return Decision(Verdict.OURS)
    if story.blocked:
        return Decision(Verdict.SKIP, "blocked")
    problem = story_id_problem(story.story_id)
    if problem:
        return Decision(Verdict.SKIP, problem)
    if holder:
        if is_node_alive(holder, nodes, now, claim_timeout):
            return Decision(Verdict.SKIP, f"claimed by live node {holder}")
    unmet = unmet_dependencies(story, stories)
    if unmet:
        return Decision(Verdict.SKIP, f"waiting for {', '.join(unmet)}")
    if holder:
        return Decision(Verdict.TAKE_OVER, f"holder {holder} is dead")
    return Decision(Verdict.CLAIM)


_NUMBER = re.compile(r"^(\d+)")


def priority_key(story: Story) -> tuple[int, int, str]:
    """Order of claiming when capacity is short: later stages first, then lower story numbers."""
    stage_rank = {stages.MERGE: 0, stages.QA: 1, stages.CURRENT: 2}.get(story.stage, 3)
    match = _NUMBER.match(story.story_id)
    number = int(match.group(1)) if match else 1 << 62
    return stage_rank, number, story.story_id


def choose_claims(
    candidates: Iterable[Story],
    *,
    me: str,
    stories: Mapping[str, Story],
    nodes: Mapping[str, NodePresence],
    now: float,
    claim_timeout: float,
    busy: int,
    max_concurrent: int,
    cooling: Set[str] = frozenset(),
) -> list[Story]:
    """The stories to claim now, best first, within the free capacity.

    ``busy`` counts stories this node already runs or is claiming; ``cooling`` holds
    stories this node recently gave up for lack of capacity (others may take them).
    """
    free = max(0, max_concurrent - busy)
    if free == 0:
        return []
    wanted = [
        s
        for s in candidates
        if s.story_id not in cooling
        and decide(s, me=me, stories=stories, nodes=nodes, now=now, claim_timeout=claim_timeout).wants_claim
    ]
    wanted.sort(key=priority_key)
    return wanted[:free]


def dead_claims(
    stories: Iterable[Story], *, me: str, nodes: Mapping[str, NodePresence], now: float, claim_timeout: float
) -> list[Story]:
    """Active stories whose claim is held by another node that is dead."""
    return [
        s
        for s in stories
        if stages.is_active(s.stage)
        and s.claimed_by
        and s.claimed_by != me
        and not is_node_alive(s.claimed_by, nodes, now, claim_timeout)
    ]


@dataclass(frozen=True, slots=True)
class Ownership:
    """Whether a run we started for (story, epoch) may go on."""

    keep: bool
    reason: str = ""


def check_ownership(story: Story | None, *, me: str, epoch: int, stage: str) -> Ownership:
    """A run keeps going only while the story is still ours at its epoch and stage."""
    if story is None:
        return Ownership(False, "story removed from the pipeline")
    if story.stage in stages.FINISHED_STAGES:
        return Ownership(False, f"story moved to {story.stage}")
    if story.claimed_by != me:
        holder = story.claimed_by or "nobody"
        return Ownership(False, f"claim lost to {holder}")
    if story.epoch != epoch:
        return Ownership(False, f"claim epoch moved from {epoch} to {story.epoch}")
    if story.stage != stage:
        return Ownership(False, f"story moved from {stage} to {story.stage}")
    return Ownership(True)
