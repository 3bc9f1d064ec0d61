"""The state of the runs this node has in flight, and the table that holds them."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from huskies_agent.engine.phases import Phase, StuckKind
from huskies_agent.engine.scaleup import Signal
from huskies_agent.k8s import objects


@dataclass
class Run:
    """A story this node is running (or starting) at one claim epoch."""

    spec: objects.RunSpec
    #: Monotonic time the claim was seen claimable (or the run adopted).
    started: float
    phase: Phase = Phase.PENDING
    storyjob: dict[str, Any] | None = None
    job_created: bool = False
    pod_seen: bool = False
    #: Monotonic time each kind of "cannot start" was first seen, while it lasts.
    stuck_since: dict[StuckKind, float] = field(default_factory=dict)
    stuck_detail: str = ""
    #: The name of the run's pod, once seen (autoscaler Events name the pod, not the Job).
    pod_name: str = ""
    #: The newest node-autoscaler verdict on the pod (``engine.scaleup``), and whether the wait past
    #: the pending timeout was announced.
    scale_signal: Signal | None = None
    scale_extended: bool = False
    #: Set once an ending is decided, so a run ends along one path only.
    ending: bool = False
    #: Status writes of one run are serialised and never go back: a late "Pending"
    #: never overwrites "Running", nor either of them a final phase.
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    written_rank: int = -1
    #: The StoryJob's ``status.conditions`` as last written (a merge patch replaces the list whole).
    conditions: list[dict[str, Any]] = field(default_factory=list)
    #: Monotonic time this node's claim was confirmed (``None``: resumed or adopted, not timed).
    claimed_at: float | None = None
    #: The pod was seen Running (claim-to-running is observed once).
    running_seen: bool = False


class RunTable:
    """Runs by story id, stories being claimed, cooldowns and per-story locks."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.claiming: set[str] = set()
        #: Outcomes ended locally whose document write is not confirmed yet, by story id.
        #: The story is not run again here until its outcome is recorded.
        self.pending: dict[str, objects.RunSpec] = {}
        #: Story id -> monotonic time until which this node does not claim it again.
        self.cooldown: dict[str, float] = {}
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def busy(self) -> int:
        """Capacity in use: stories with a run or a claim being confirmed, each once (a story
        moves from ``claiming`` to ``runs`` and is briefly in both)."""
        return len(self.runs) + len(self.claiming.difference(self.runs))

    def get(self, story_id: str) -> Run | None:
        return self.runs.get(story_id)

    def occupied(self, story_id: str) -> bool:
        """A run, a claim being confirmed or an unrecorded outcome holds the story here."""
        return story_id in self.runs or story_id in self.claiming or story_id in self.pending

    def is_current(self, run: Run) -> bool:
        """``run`` is still the live run of its story and no ending was decided."""
        return self.runs.get(run.spec.story_id) is run and not run.ending

    def cooling(self, now: float) -> set[str]:
        return {sid for sid, until in self.cooldown.items() if until > now}

    def cool(self, story_id: str, now: float, seconds: float) -> None:
        if seconds > 0:
            self.cooldown[story_id] = max(self.cooldown.get(story_id, 0.0), now + seconds)

    def prune(self, now: float) -> None:
        """Forget expired cooldowns and idle locks."""
        self.cooldown = {k: v for k, v in self.cooldown.items() if v > now}
        for sid in [k for k, lock in self.locks.items() if not lock.locked() and not self.occupied(k)]:
            del self.locks[sid]

    def count_by_phase(self) -> dict[Phase, int]:
        counts: dict[Phase, int] = defaultdict(int)
        for run in self.runs.values():
            counts[run.phase] += 1
        return counts
