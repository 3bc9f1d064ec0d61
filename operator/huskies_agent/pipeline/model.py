"""Typed records of the pipeline document and their parsers.

The records (claims, stage moves, stories, presence) and how every replica resolves a story's
entries to one state. Raw values are read with the total helpers of ``pipeline/values.py``
(re-exported here); a parser raises :class:`MalformedEntry`, which callers log and quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from huskies_agent.pipeline import stages

# Re-exported: the value readers belong to values.py, and callers read them from here too.
from huskies_agent.pipeline.values import (
    DEFAULT_LIMITS as DEFAULT_LIMITS,
)
from huskies_agent.pipeline.values import (
    MAX_SAFE_INT as MAX_SAFE_INT,
)
from huskies_agent.pipeline.values import (
    MAX_STORY_ID_LENGTH as MAX_STORY_ID_LENGTH,
)
from huskies_agent.pipeline.values import (
    MalformedEntry as MalformedEntry,
)
from huskies_agent.pipeline.values import (
    ParseLimits as ParseLimits,
)
from huskies_agent.pipeline.values import (
    as_bool as as_bool,
)
from huskies_agent.pipeline.values import (
    as_float as as_float,
)
from huskies_agent.pipeline.values import (
    as_int as as_int,
)
from huskies_agent.pipeline.values import (
    as_str as as_str,
)
from huskies_agent.pipeline.values import (
    branch_for as branch_for,
)
from huskies_agent.pipeline.values import (
    describe as describe,
)
from huskies_agent.pipeline.values import (
    parse_depends_on as parse_depends_on,
)
from huskies_agent.pipeline.values import (
    story_id_problem as story_id_problem,
)
from huskies_agent.pipeline.values import (
    value_problem as value_problem,
)

#: Key prefix of a node's claim entry in a story's Map: ``claim@<node>``.
CLAIM_PREFIX = "claim@"
#: Key prefix of a stage move in a story's Map: ``stage@<writer>``.
STAGE_PREFIX = "stage@"
#: The single claim value of schema 1, read (never written) for compatibility.
LEGACY_CLAIM_KEY = "claim"
#: Fail epochs a node keeps in its claim entry.
MAX_FAILS = 32


def _as_epochs(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise MalformedEntry(f"fails must be a list of epochs, got {value!r}")
    return tuple(as_int(v) for v in value)


def _as_stage(value: object, what: str) -> str:
    stage = as_str(value)
    if not stages.is_stage(stage):
        raise MalformedEntry(f"{what} has unknown stage {stage!r}")
    return stage


def entry_problem(key: object, raw: object, limits: ParseLimits = DEFAULT_LIMITS) -> str | None:
    """Why the entry stored under ``key`` is quarantined before its fields are read, or ``None``."""
    if not isinstance(key, str):
        return f"its key is {describe(key)}, not a string"
    if len(key) > limits.max_string_length:
        return f"its key is {len(key)} characters long"
    problem = value_problem(raw, limits)
    return None if problem is None else f"it holds {problem}"


@dataclass(frozen=True, slots=True)
class Claim:
    """One node's claim entry (``claim@<node>``); only that node ever writes it.

    ``epoch`` is above every epoch the story had when the claim was made; ``stage`` is
    the stage the claim works on; ``held`` turns False when the node releases, completes
    or fails. ``fails`` lists the epochs at which this node's runs failed (newest last).
    ``at`` is the writer's wall clock, for people only: nothing compares it.
    """

    node: str
    epoch: int
    at: float = 0.0
    stage: str = ""
    held: bool = True
    fails: tuple[int, ...] = ()

    @property
    def order(self) -> tuple[int, str]:
        """Concurrent claims resolve by this key, the same on every replica."""
        return self.epoch, self.node

    def to_raw(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stage": self.stage, "held": self.held, "at": self.at,
                "fails": list(self.fails[-MAX_FAILS:])}

    @classmethod
    def from_raw(cls, node: str, raw: object) -> Claim:
        """The entry stored under ``claim@<node>``; raises MalformedEntry."""
        if not node:
            raise MalformedEntry("claim entry without a node id")
        if not isinstance(raw, Mapping):
            raise MalformedEntry(f"claim of {node!r} must be an object, got {raw!r}")
        epoch = as_int(raw.get("epoch"))
        if epoch < 1:
            raise MalformedEntry(f"claim of {node!r} has epoch {epoch} (must be 1 or more)")
        return cls(
            node=node,
            epoch=epoch,
            at=as_float(raw.get("at")),
            stage=_as_stage(raw.get("stage"), f"claim of {node!r}"),
            held=as_bool(raw.get("held"), default=True),
            fails=_as_epochs(raw.get("fails")),
        )

    @classmethod
    def from_legacy(cls, raw: object, stage: str) -> Claim | None:
        """The schema-1 ``claim`` value ``{"node", "epoch", "at"}`` as an entry of its node.

        It names no stage: it was made for the story's plain stage. A released one
        (empty node) still carries its epoch, so it is kept as a released entry.
        """
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise MalformedEntry(f"claim must be an object, got {raw!r}")
        node = as_str(raw.get("node"))
        epoch = as_int(raw.get("epoch"))
        if epoch < 0:
            raise MalformedEntry(f"claim has a negative epoch {epoch}")
        return cls(node=node, epoch=epoch, at=as_float(raw.get("at")), stage=stage, held=bool(node))


@dataclass(frozen=True, slots=True)
class StageMove:
    """A stage move (``stage@<writer>``): the story is in ``stage`` as of ``epoch``.

    Build nodes write one when a run completes (at the claim's epoch); people write one
    (``human``) above every epoch they see. A person's move beats a node's at the same
    epoch, so a claim racing a person's move can never complete over it.
    """

    writer: str
    stage: str
    epoch: int
    human: bool = False

    @property
    def order(self) -> tuple[int, bool, str]:
        return self.epoch, self.human, self.writer

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"stage": self.stage, "epoch": self.epoch}
        if self.human:
            raw["human"] = True
        return raw

    @classmethod
    def from_raw(cls, writer: str, raw: object) -> StageMove:
        if not writer:
            raise MalformedEntry("stage move without a writer id")
        if not isinstance(raw, Mapping):
            raise MalformedEntry(f"stage move of {writer!r} must be an object, got {raw!r}")
        epoch = as_int(raw.get("epoch"))
        if epoch < 1:
            raise MalformedEntry(f"stage move of {writer!r} has epoch {epoch} (must be 1 or more)")
        return cls(writer=writer, stage=_as_stage(raw.get("stage"), f"stage move of {writer!r}"), epoch=epoch,
                   human=as_bool(raw.get("human")))


@dataclass(frozen=True, slots=True)
class Registers:
    """What every replica computes from a story's entries (see :func:`resolve`)."""

    stage: str
    stage_epoch: int
    top_epoch: int
    claim: Claim | None
    retry_count: int
    #: Writer of the winning stage move ("" for the author's stage).
    moved_by: str = ""


def _move_order(move: StageMove) -> tuple[int, bool, str]:
    return move.order


def _claim_order(claim: Claim) -> tuple[int, str]:
    return claim.order


def resolve(base_stage: str, claims: Iterable[Claim], moves: Iterable[StageMove], *,
            legacy_retries: int = 0) -> Registers:
    """The story's state as a pure function of its entries, the same on every replica.

    * stage: the stage move with the highest ``(epoch, human, writer)``; the author's
      plain stage counts as a move at epoch 0 by writer "".
    * top_epoch: the highest epoch of any claim or stage move (a new claim takes one more).
    * claim: the entry with the highest ``(epoch, node)``, if it is held, newer than the
      stage move and made for the current stage; otherwise nobody holds the story.
    * retry_count: distinct fail epochs above the stage move's epoch (plus the schema-1
      ``retry_count`` while no stage move has superseded the author's stage).
    """
    claim_list = list(claims)
    move_list = list(moves)
    if not claim_list and not move_list:  # the common case: a story nobody claimed yet
        return Registers(stage=base_stage, stage_epoch=0, top_epoch=0, claim=None,
                         retry_count=max(0, legacy_retries))
    move = max(move_list, key=_move_order) if move_list else StageMove("", base_stage, 0)
    top = max([move.epoch, *(c.epoch for c in claim_list)])
    winner = max(claim_list, key=_claim_order, default=None)
    valid = winner is not None and winner.held and winner.epoch > move.epoch and winner.stage == move.stage
    fails = {epoch for c in claim_list for epoch in c.fails if epoch > move.epoch}
    retries = len(fails) + (max(0, legacy_retries) if move.epoch == 0 else 0)
    return Registers(stage=move.stage, stage_epoch=move.epoch, top_epoch=top,
                     claim=winner if valid else None, retry_count=retries, moved_by=move.writer)


@dataclass(frozen=True, slots=True)
class Story:
    """A story as every replica sees it: ``stage``, ``claim`` and ``retry_count`` are resolved."""

    story_id: str
    #: The effective stage (the winning stage move).
    stage: str
    name: str = ""
    agent: str = ""
    retry_count: int = 0
    blocked: bool = False
    depends_on: tuple[str, ...] = ()
    #: The winning claim when it is valid (held, newer than the stage move, for this stage).
    claim: Claim | None = None
    #: The last failure reason recorded by a build node (empty when none).
    last_error: str = ""
    #: The highest epoch any claim or stage move of this story used.
    top_epoch: int = 0
    #: The epoch of the winning stage move (0: the author's stage).
    stage_epoch: int = 0
    #: Every node's claim entry, held or not, ordered by node.
    claims: tuple[Claim, ...] = ()
    #: Writer of the winning stage move ("" while the author's stage stands).
    moved_by: str = ""

    @property
    def claimed_by(self) -> str:
        return self.claim.node if self.claim else ""

    @property
    def epoch(self) -> int:
        """The highest epoch used so far (the claim's epoch while the story is claimed)."""
        return max(self.top_epoch, self.claim.epoch if self.claim else 0)

    def entry_of(self, node: str) -> Claim | None:
        """``node``'s own claim entry (held or not)."""
        for claim in self.claims:
            if claim.node == node:
                return claim
        return None


def parse_story(key: str, raw: Mapping[str, Any]) -> Story:
    """A :class:`Story` from the raw fields stored under ``key``; raises MalformedEntry."""
    if type(raw) is not dict and not isinstance(raw, Mapping):  # the exact type first: an ABC check is slow
        raise MalformedEntry(f"story {key!r} is not an object")
    story_id = as_str(raw.get("story_id"), default=key) or key
    if story_id != key:
        raise MalformedEntry(f"story stored under {key!r} names itself {describe(story_id)}")
    story_id = key  # one string object for the id, not two equal ones (100,000 stories: ~7 MB)
    base = as_str(raw.get("stage"))
    if not stages.is_stage(base):
        raise MalformedEntry(f"story {key!r} has unknown stage {describe(base)}")
    entries: dict[str, Claim] = {}
    moves: list[StageMove] = []
    for field_name, value in raw.items():
        if not isinstance(field_name, str) or "@" not in field_name:
            continue  # most keys are plain fields: one cheap test each
        kind, _, owner = field_name.partition("@")
        if kind == "claim":
            entries[owner] = Claim.from_raw(owner, value)
        elif kind == "stage":
            moves.append(StageMove.from_raw(owner, value))
    legacy = Claim.from_legacy(raw.get(LEGACY_CLAIM_KEY), base)
    if legacy is not None and legacy.node not in entries:
        entries[legacy.node] = legacy
    legacy_retries = as_int(raw.get("retry_count"))
    name, agent = as_str(raw.get("name")), as_str(raw.get("agent"))
    blocked, depends_on = as_bool(raw.get("blocked")), parse_depends_on(raw.get("depends_on"))
    last_error = as_str(raw.get("last_error"))
    if not entries and not moves:
        # Most stories (every one nobody claimed yet, archives): what resolve() gives them, directly.
        return Story(story_id, base, name, agent, max(0, legacy_retries), blocked, depends_on, None, last_error)
    registers = resolve(base, entries.values(), moves, legacy_retries=legacy_retries)
    ordered = tuple(entries[node] for node in sorted(entries)) if len(entries) > 1 else tuple(entries.values())
    return Story(
        story_id=story_id,
        stage=registers.stage,
        name=name,
        agent=agent,
        retry_count=registers.retry_count,
        blocked=blocked,
        depends_on=depends_on,
        claim=registers.claim,
        last_error=last_error,
        top_epoch=registers.top_epoch,
        stage_epoch=registers.stage_epoch,
        claims=ordered,
        moved_by=registers.moved_by,
    )


def read_story(key: str, raw: object, limits: ParseLimits = DEFAULT_LIMITS) -> Story:
    """The total reader of one story entry: a :class:`Story`, or MalformedEntry saying why not.

    On top of :func:`parse_story`: the entry must fit ``limits``, its id must be one
    a build node can work on (:func:`story_id_problem`), and it must not depend on
    itself (it would wait forever). Any other exception is a bug in the parser and
    is reported as MalformedEntry too, so no value stops the caller.
    """
    problem = entry_problem(key, raw, limits)
    if problem is not None:
        raise MalformedEntry(f"story {describe(key)} is quarantined: {problem}")
    id_problem = story_id_problem(key)
    if id_problem is not None:
        raise MalformedEntry(f"story {describe(key)} is quarantined: {id_problem}")
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise MalformedEntry(f"story {key!r} is {describe(raw)}, not an object")
    try:
        story = parse_story(key, raw)
    except MalformedEntry as exc:
        if str(exc).startswith("story "):
            raise
        raise MalformedEntry(f"story {key!r}: {exc}") from None
    except Exception as exc:  # a parser bug: quarantine the entry, keep serving the others
        raise MalformedEntry(f"story {key!r} could not be read ({type(exc).__name__}: {exc})") from exc
    if key in story.depends_on:
        raise MalformedEntry(f"story {key!r} depends on itself, so it would wait forever")
    return story


@dataclass(frozen=True, slots=True)
class NodePresence:
    """A node's entry in the document's ``nodes`` collection."""

    node_id: str
    last_seen: float
    alive: bool = True
    address: str = ""
    #: Free build slots the node advertises (``None``: not advertised).
    capacity: int | None = None
    #: Grows with every write of the entry, so each write is a change every peer receives.
    seq: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = dict(self.extra)
        raw.update(node_id=self.node_id, last_seen=self.last_seen, alive=self.alive, address=self.address)
        if self.capacity is not None:
            raw["capacity"] = self.capacity
        raw["seq"] = self.seq
        return raw


def parse_presence(key: str, raw: object, limits: ParseLimits = DEFAULT_LIMITS) -> NodePresence:
    """A node's presence entry, or MalformedEntry saying why it is quarantined (never anything else)."""
    problem = entry_problem(key, raw, limits)
    if problem is not None:
        raise MalformedEntry(f"node {describe(key)} is quarantined: {problem}")
    if not isinstance(raw, Mapping):
        raise MalformedEntry(f"node {key!r} is {describe(raw)}, not an object")
    node_id = as_str(raw.get("node_id"), default=key) or key
    if node_id != key:
        raise MalformedEntry(f"node stored under {key!r} names itself {describe(node_id)}")
    capacity = raw.get("capacity")
    known = {"node_id", "last_seen", "alive", "address", "capacity", "seq"}
    return NodePresence(
        node_id=node_id,
        last_seen=as_float(raw.get("last_seen")),
        alive=as_bool(raw.get("alive"), default=True),
        address=as_str(raw.get("address")),
        capacity=None if capacity is None else as_int(capacity),
        seq=as_int(raw.get("seq")),
        extra={k: v for k, v in raw.items() if k not in known},
    )
