"""The states a run goes through, and the ways a pod can fail to start.

These are the only spellings of StoryJob phases and stuck kinds in the engine; the
string values are what the StoryJob CRD's status accepts (``crds/storyjobs.yaml``).
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    """A StoryJob's ``status.phase``."""

    PENDING = "Pending"  # StoryJob and Job created, no pod running yet
    RUNNING = "Running"  # the Job has an active pod
    SUCCEEDED = "Succeeded"  # the Job completed; the stage moves on
    FAILED = "Failed"  # the run failed (counted), or could not start (not counted)
    RELEASED = "Released"  # disrupted (eviction, drain, shutdown): the story was handed off
    LOST = "Lost"  # the claim went to someone else (or the push was fenced)
    CANCELLED = "Cancelled"  # the story was finished, removed or its Job deleted by hand

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def rank(self) -> int:
        """Status writes never go back: Pending < Running < any final phase."""
        return 2 if self in FINAL else (1 if self is Phase.RUNNING else 0)

    @classmethod
    def parse(cls, value: object) -> Phase | None:
        """The phase written on a StoryJob, or ``None`` when absent or unknown."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


FINAL: frozenset[Phase] = frozenset(
    {Phase.SUCCEEDED, Phase.FAILED, Phase.RELEASED, Phase.LOST, Phase.CANCELLED}
)


class StuckKind(enum.StrEnum):
    """Why a run's pod cannot start (each kind has its own timeout)."""

    IMAGE = "image"  # the image cannot be pulled
    CONFIG = "config"  # the container cannot be created (missing Secret, ConfigMap...)
    UNSCHEDULABLE = "unschedulable"  # no node has room
    NO_POD = "no-pod"  # the Job got no pod at all (missing ServiceAccount, quota...)
