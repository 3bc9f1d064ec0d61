"""Claiming policy: pure decisions about which stories this node claims, keeps or leaves.

The protocol these functions implement is written down in docs/claims.md. In short:

* Only stories in ``2_current``, ``3_qa`` or ``4_merge`` are worked on; blocked stories,
  invalid story ids and stories with unmet dependencies are skipped.
* A claim held by a **live** node stands, however old it is. Liveness is judged by
  :class:`Liveness` from when *this* node last received a presence change of the other
  node, on this node's monotonic clock; no two machines' clocks are ever compared.
* A claim held by a dead node is taken over by writing a higher-epoch claim of one's
  own; nobody writes (or releases) another node's claim.
* Work spreads by weighted rendezvous hashing: each node ranks the live nodes with room
  for a story the same way and claims at once only where it ranks first; the k-th
  ranked node waits ``k * spread_delay`` first, so most stories are never raced.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import Story, story_id_problem
from huskies_agent.pipeline.values import MalformedEntry, as_int


class Verdict(enum.Enum):
    CLAIM = "claim"  # unclaimed (or released): claim it
    TAKE_OVER = "take_over"  # held by a dead node: claim it above that node's epoch
    OURS = "ours"  # we hold the claim
    SKIP = "skip"  # nothing to do for this node


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""

    @property
    def wants_claim(self) -> bool:
        return self.verdict in (Verdict.CLAIM, Verdict.TAKE_OVER)


IsDead = Callable[[str], bool]


class Liveness:
    """Which other nodes this node may judge dead, on this node's monotonic clock only.

    ``heard`` is called when a *remote* update changed a node's presence entry (never
    for our own writes), ``link_up`` when the rendezvous connection is synced and
    ``link_down`` when it drops. A node is dead only while the link is up and nothing
    was heard from it for ``claim_timeout`` seconds since the later of its last change
    and the link coming up: while cut off nobody is dead, and after a reconnect nobody
    is dead until synced for a full timeout. Wall-clock ``last_seen`` values written by
    other machines are never looked at.
    """

    __slots__ = ("claim_timeout", "_last_heard", "_link_up_at")

    def __init__(self, claim_timeout: float) -> None:
        self.claim_timeout = claim_timeout
        self._last_heard: dict[str, float] = {}
        self._link_up_at: float | None = None

    def heard(self, node: str, now: float) -> None:
        previous = self._last_heard.get(node)
        self._last_heard[node] = now if previous is None else max(previous, now)

    def link_up(self, now: float) -> None:
        """The link is synced; a repeated call while it stays up changes nothing."""
        if self._link_up_at is None:
            self._link_up_at = now

    def link_down(self) -> None:
        self._link_up_at = None

    @property
    def linked(self) -> bool:
        return self._link_up_at is not None

    def silent_for(self, node: str, now: float) -> float | None:
        """Seconds without news of ``node`` that count (``None`` while cut off)."""
        if self._link_up_at is None:
            return None
        since = max(self._link_up_at, self._last_heard.get(node, self._link_up_at))
        return now - since

    def is_dead(self, node: str, now: float) -> bool:
        silent = self.silent_for(node, now)
        return silent is not None and silent >= self.claim_timeout


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


def decide(story: Story, *, me: str, stories: Mapping[str, Story], is_dead: IsDead) -> Decision:
    """What this node should do about ``story``, ignoring capacity and spreading."""
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
    if holder and not is_dead(holder):
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


def hrw_score(story_id: str, node: str, weight: float) -> float:
    """Weighted rendezvous-hash score ``-weight / ln(u)``, ``u`` in (0, 1) from a hash of both ids."""
    digest = hashlib.blake2b(f"{story_id}\x1f{node}".encode(), digest_size=8).digest()
    u = ((int.from_bytes(digest, "big") >> 12) + 0.5) / float(1 << 52)
    return -weight / math.log(u)


def slot_weight(capacity: int | None, warm: object = 0) -> int:
    """A node's weight in :func:`rank` from what its presence says: free slots, and a warm slot
    (one that starts at once, docs/autoscaling.md) counts twice.

    Total over what any peer wrote: ``warm`` is read as ``capacity`` is (a whole number; the CRDT
    gives numbers back as floats), and a missing, negative or malformed one counts 0 (a peer that
    does not publish it weighs by its free slots, as before); no more warm slots count than free ones.
    """
    free = capacity if isinstance(capacity, int) and not isinstance(capacity, bool) and capacity > 0 else 0
    try:
        ready = max(0, as_int(warm))
    except MalformedEntry:
        ready = 0
    return free + min(ready, free)


def rank(story_id: str, capacities: Mapping[str, int]) -> list[str]:
    """Nodes with free slots, best first for ``story_id``; every node computes the same order.

    A node's chance of ranking first is proportional to its free slots.
    """
    nodes = [(node, slots) for node, slots in capacities.items() if slots > 0]
    nodes.sort(key=lambda item: (-hrw_score(story_id, item[0], float(item[1])), item[0]))
    return [node for node, _ in nodes]


@dataclass(frozen=True, slots=True)
class Choice:
    """Stories to claim now (best first), and when to look again at the ones still waiting."""

    now: list[Story]
    recheck_in: float | None = None


def choose_claims(
    candidates: Iterable[Story],
    *,
    me: str,
    stories: Mapping[str, Story],
    is_dead: IsDead,
    capacities: Mapping[str, int],
    busy: int,
    max_concurrent: int,
    cooling: Set[str] = frozenset(),
    waited: Callable[[str], float],
    spread_delay: float,
    my_warm: int = 0,
) -> Choice:
    """The stories to claim now within the free capacity, spread across nodes by rank.

    ``capacities`` maps other nodes to their weights (:func:`slot_weight` of what they
    advertise); dead nodes and nodes without room are left out, and this node counts with
    its own free slots and ``my_warm`` warm ones.
    A story where this node ranks k-th (0-based) is claimed once it has ``waited`` at
    least ``k * spread_delay`` seconds claimable. ``busy`` counts stories this node runs
    or is claiming; ``cooling`` holds stories this node gave up recently.
    """
    free = max(0, max_concurrent - busy)
    if free == 0:
        return Choice([])
    room = {node: slots for node, slots in capacities.items() if node != me and slots > 0 and not is_dead(node)}
    room[me] = slot_weight(free, my_warm)
    ready: list[tuple[int, Story]] = []
    recheck: float | None = None
    for story in candidates:
        if story.story_id in cooling:
            continue
        if not decide(story, me=me, stories=stories, is_dead=is_dead).wants_claim:
            continue
        place = rank(story.story_id, room).index(me)
        due = place * spread_delay - waited(story.story_id)
        if due <= 0:
            ready.append((place, story))
        else:
            recheck = due if recheck is None else min(recheck, due)
    # Within a stage, a node takes first the stories it ranks best for: when several nodes free a
    # slot at once with a backlog, they then reach for different stories instead of the same one.
    ready.sort(key=lambda item: (priority_key(item[1])[0], item[0], priority_key(item[1])[1:]))
    return Choice([story for _, story in ready[:free]], recheck)


@dataclass(frozen=True, slots=True)
class Ownership:
    """Whether a run we started for (story, epoch, stage) may go on."""

    keep: bool
    reason: str = ""


def check_ownership(story: Story | None, *, me: str, epoch: int, stage: str) -> Ownership:
    """A run keeps going only while our claim at ``epoch`` for ``stage`` is the winning claim."""
    if story is None:
        return Ownership(False, "story removed from the pipeline")
    if story.stage in stages.FINISHED_STAGES:
        return Ownership(False, f"story moved to {story.stage}")
    claim = story.claim
    if claim is not None and claim.node == me and claim.epoch == epoch and claim.stage == stage:
        return Ownership(True)
    if story.stage != stage:
        return Ownership(False, f"story moved from {stage} to {story.stage}")
    if claim is None:
        return Ownership(False, "claim lost to nobody (released or fenced by a newer epoch)")
    if claim.node != me:
        return Ownership(False, f"claim lost to {claim.node}")
    return Ownership(False, f"claim epoch moved from {epoch} to {claim.epoch}")
