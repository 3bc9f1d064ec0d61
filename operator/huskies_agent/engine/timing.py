"""Where a claim's time goes: monotonic timestamps of its way from the document update to
its Job, logged with the "started story" line so that benchmarks can print the breakdown."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class StartTiming:
    """Monotonic seconds (``time.monotonic``, comparable between processes of one machine).

    ``None`` where a step did not happen on this path (a resumed claim has no ``written``).
    """

    #: The document update that made the story claimable was applied here.
    heard: float | None = None
    #: The dispatcher chose to claim it.
    decided: float | None = None
    #: The claim was written to the local document (and queued to the rendezvous).
    written: float | None = None
    #: The rendezvous confirmed it.
    confirmed: float | None = None
    #: A create slot was free (``ctx.create_slots``: bounded parallel creates).
    slot: float | None = None
    #: The StoryJob create returned.
    storyjob: float | None = None
    #: The Job create returned.
    job: float | None = None

    def log_fields(self) -> dict[str, float]:
        """``t_<step>`` fields for a structured log line (steps that happened only)."""
        return {f"t_{step}": round(value, 6) for step, value in asdict(self).items() if value is not None}
