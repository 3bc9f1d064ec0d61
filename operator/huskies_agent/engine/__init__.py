"""The build node's engine: pipeline changes in, StoryJobs and Jobs out.

Modules, each with one job:

* ``phases``    — the Phase and StuckKind enums.
* ``outcomes``  — pure: an observation of how a run ended -> the outcome to apply.
* ``ports``     — the KubeApi and Replicator protocols and the clock types.
* ``runs``      — a run's state and the table of runs, claims, cooldowns and locks.
* ``context``   — the dependencies and hooks every part shares.
* ``claiming``  — which changed stories to claim, resume or stop; the claim writes.
* ``lifecycle`` — start_run and the one end_run every ending goes through.
* ``observe``   — Job and Pod events (and listings) -> observations.
* ``recovery``  — adoption after a restart, clean-up of finished StoryJobs.
* ``core``      — the Engine: wiring and loops.
"""

from huskies_agent.engine.core import Engine
from huskies_agent.engine.phases import FINAL, Phase, StuckKind
from huskies_agent.engine.ports import KubeApi, Replicator

__all__ = ["FINAL", "Engine", "KubeApi", "Phase", "Replicator", "StuckKind"]
