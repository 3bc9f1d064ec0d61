"""Typed records of the pipeline document and their tolerant parsers.

The CRDT stores JSON-like values: numbers come back as floats, fields may be missing
or of the wrong type when another peer wrote them. Parsers here turn raw values into
frozen dataclasses or raise :class:`MalformedEntry`, which callers log and skip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huskies_agent.pipeline import stages

#: Longest story id a build node works on. Branch names, labels and paths derive from it.
MAX_STORY_ID_LENGTH = 200

# Letters and digits of any script, then letters, digits, '.', '_' or '-'.
_STORY_ID_CHARS = re.compile(r"^[^\W_][\w.-]*$", re.UNICODE)


class MalformedEntry(ValueError):
    """A document entry that cannot be understood; the caller skips it and logs why."""


def story_id_problem(story_id: object) -> str | None:
    """Why ``story_id`` cannot be worked on, or ``None`` when it is acceptable.

    Acceptable ids make a valid git branch ``feature/story-<id>`` and are safe as a
    path component and command-line argument: 1..200 characters, starting with a
    letter or digit, then letters, digits, ``.``, ``_`` or ``-``; no ``..``; not
    ending in ``.`` or ``.lock``. Unicode letters are allowed.
    """
    if not isinstance(story_id, str):
        return f"story id is a {type(story_id).__name__}, not a string"
    if not story_id:
        return "story id is empty"
    if len(story_id) > MAX_STORY_ID_LENGTH:
        return f"story id is {len(story_id)} characters long (at most {MAX_STORY_ID_LENGTH})"
    if not _STORY_ID_CHARS.match(story_id) or not story_id.isprintable():
        return "story id may hold only letters, digits, '.', '_' and '-', starting with a letter or digit"
    if ".." in story_id or story_id.endswith(".") or story_id.endswith(".lock"):
        return "story id may not contain '..' or end in '.' or '.lock'"
    return None


def branch_for(story_id: str) -> str:
    """The git branch a story's work is pushed to."""
    return f"feature/story-{story_id}"


def as_int(value: object, *, default: int = 0) -> int:
    """An integer from a CRDT number (ints come back as floats); ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise MalformedEntry(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise MalformedEntry(f"expected a whole number, got {value!r}")


def as_float(value: object, *, default: float = 0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool):
        raise MalformedEntry(f"expected a number, got {value!r}")
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    raise MalformedEntry(f"expected a number, got {value!r}")


def as_bool(value: object, *, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MalformedEntry(f"expected true or false, got {value!r}")


def as_str(value: object, *, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    raise MalformedEntry(f"expected a string, got {value!r}")


def parse_depends_on(value: object) -> tuple[str, ...]:
    """Dependencies: a list of story ids, or one string of ids separated by commas/spaces."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = re.split(r"[,\s]+", value)
    elif isinstance(value, list | tuple):
        parts = [as_str(v) for v in value]
    else:
        raise MalformedEntry(f"depends_on must be a list or a string, got {value!r}")
    return tuple(p for p in (s.strip() for s in parts) if p)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who works on a story. Written as one value, so it is never half one node's.

    ``epoch`` grows by one each time the story is claimed; a released claim keeps
    its epoch with an empty ``node`` so the next claim continues the count.
    """

    node: str
    epoch: int
    at: float

    @property
    def held(self) -> bool:
        return bool(self.node)

    def to_raw(self) -> dict[str, Any]:
        return {"node": self.node, "epoch": self.epoch, "at": self.at}

    @classmethod
    def from_raw(cls, raw: object) -> Claim | None:
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise MalformedEntry(f"claim must be an object, got {raw!r}")
        return cls(
            node=as_str(raw.get("node")),
            epoch=as_int(raw.get("epoch")),
            at=as_float(raw.get("at")),
        )


@dataclass(frozen=True, slots=True)
class Story:
    story_id: str
    stage: str
    name: str = ""
    agent: str = ""
    retry_count: int = 0
    blocked: bool = False
    depends_on: tuple[str, ...] = ()
    claim: Claim | None = None
    #: The last failure reason recorded by a build node (empty when none).
    last_error: str = ""

    @property
    def claimed_by(self) -> str:
        return self.claim.node if self.claim else ""

    @property
    def epoch(self) -> int:
        return self.claim.epoch if self.claim else 0


def parse_story(key: str, raw: Mapping[str, Any]) -> Story:
    """A :class:`Story` from the raw fields stored under ``key``; raises MalformedEntry."""
    if not isinstance(raw, Mapping):
        raise MalformedEntry(f"story {key!r} is not an object")
    story_id = as_str(raw.get("story_id"), default=key) or key
    if story_id != key:
        raise MalformedEntry(f"story stored under {key!r} names itself {story_id!r}")
    stage = as_str(raw.get("stage"))
    if not stages.is_stage(stage):
        raise MalformedEntry(f"story {key!r} has unknown stage {stage!r}")
    return Story(
        story_id=story_id,
        stage=stage,
        name=as_str(raw.get("name")),
        agent=as_str(raw.get("agent")),
        retry_count=as_int(raw.get("retry_count")),
        blocked=as_bool(raw.get("blocked")),
        depends_on=parse_depends_on(raw.get("depends_on")),
        claim=Claim.from_raw(raw.get("claim")),
        last_error=as_str(raw.get("last_error")),
    )


@dataclass(frozen=True, slots=True)
class NodePresence:
    """A node's entry in the document's ``nodes`` collection."""

    node_id: str
    last_seen: float
    alive: bool = True
    address: str = ""
    #: Free build slots the node advertises (``None``: not advertised).
    capacity: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = dict(self.extra)
        raw.update(node_id=self.node_id, last_seen=self.last_seen, alive=self.alive, address=self.address)
        if self.capacity is not None:
            raw["capacity"] = self.capacity
        return raw


def parse_presence(key: str, raw: object) -> NodePresence:
    if not isinstance(raw, Mapping):
        raise MalformedEntry(f"node {key!r} is not an object")
    node_id = as_str(raw.get("node_id"), default=key) or key
    capacity = raw.get("capacity")
    known = {"node_id", "last_seen", "alive", "address", "capacity"}
    return NodePresence(
        node_id=node_id,
        last_seen=as_float(raw.get("last_seen")),
        alive=as_bool(raw.get("alive"), default=True),
        address=as_str(raw.get("address")),
        capacity=None if capacity is None else as_int(capacity),
        extra={k: v for k, v in raw.items() if k not in known},
    )
