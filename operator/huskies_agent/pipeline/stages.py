"""Pipeline stages and the transitions a build node drives."""

from __future__ import annotations

BACKLOG = "1_backlog"
CURRENT = "2_current"
QA = "3_qa"
MERGE = "4_merge"
DONE = "5_done"
ARCHIVED = "6_archived"

ALL_STAGES: tuple[str, ...] = (BACKLOG, CURRENT, QA, MERGE, DONE, ARCHIVED)
#: Stages in which a build node claims and runs work (as the original agent mode does).
ACTIVE_STAGES: frozenset[str] = frozenset({CURRENT, QA, MERGE})
#: Stages after which nothing of a story should be left running.
FINISHED_STAGES: frozenset[str] = frozenset({DONE, ARCHIVED})

_NEXT: dict[str, str] = {CURRENT: QA, QA: MERGE, MERGE: DONE}

#: The agent role that works a story in each active stage.
ROLE_FOR_STAGE: dict[str, str] = {CURRENT: "coder", QA: "qa", MERGE: "mergemaster"}


def is_stage(value: str) -> bool:
    return value in ALL_STAGES


def is_active(stage: str) -> bool:
    return stage in ACTIVE_STAGES


def next_stage(stage: str) -> str:
    """The stage a story moves to when the work of ``stage`` succeeds."""
    try:
        return _NEXT[stage]
    except KeyError:
        raise ValueError(f"stage {stage!r} has no successor a build node may advance to") from None
