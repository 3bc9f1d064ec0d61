"""Warm build slots, decided: how many placeholders to keep, which to add or remove, and what
this node then says about its capacity (pure; ``engine/warmpool.py`` applies it).

* **Size.** ``min(warm_slots, max_concurrent - busy)``, and 0 while the node is draining
  (not the leader, shutting down, or claiming held) or ``max_concurrent`` is 0. ``busy``
  counts the runs this node claims, starts or runs, so placeholders and builds together
  never ask for more than ``max_concurrent`` pods.
* **Plan.** Placeholders being deleted (preempted, drained) do not count. Missing ones are
  created; surplus ones are deleted, those without a node first, so a slot that is warm
  stays warm.
* **Presence.** ``warm`` is the number of free slots that start at once (placeholders on a
  node). ``capacity`` is the free slots, except on a cluster that cannot add nodes where a
  placeholder found no node: then no slot beyond the warm ones would start, and ``capacity``
  says so. A held node advertises nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from huskies_agent.k8s.warmpod import SlotState


def desired(*, warm_slots: int, max_concurrent: int, busy: int, draining: bool) -> int:
    """How many placeholders this node keeps now."""
    if draining or warm_slots <= 0 or max_concurrent <= 0:
        return 0
    return max(0, min(warm_slots, max_concurrent - max(busy, 0)))


@dataclass(frozen=True, slots=True)
class Slot:
    """One placeholder pod as the pool sees it."""

    name: str
    state: SlotState


@dataclass(frozen=True, slots=True)
class Plan:
    create: int = 0
    delete: tuple[str, ...] = ()


#: Which surplus placeholders go first: those that hold no room yet.
_DELETE_ORDER = {SlotState.UNSCHEDULABLE: 0, SlotState.WAITING: 1, SlotState.READY: 2}


def plan(slots: Sequence[Slot], want: int) -> Plan:
    """The creates and deletes that bring the live placeholders to ``want``."""
    live = [s for s in slots if s.state is not SlotState.GOING]
    want = max(want, 0)
    if len(live) < want:
        return Plan(create=want - len(live))
    surplus = sorted(live, key=lambda s: (_DELETE_ORDER[s.state], s.name))[:len(live) - want]
    return Plan(delete=tuple(s.name for s in surplus))


@dataclass(frozen=True, slots=True)
class Tally:
    """Live placeholders by what they do: on a node, waiting for one, or with no node at all."""

    ready: int = 0
    waiting: int = 0
    unschedulable: int = 0
    #: Runs in flight when the pool was looked at: each run started since takes a warm slot.
    busy: int = 0


def tally(slots: Sequence[Slot], step: Plan, busy: int = 0) -> Tally:
    """The pool once ``step`` is applied (new placeholders wait for a node), with ``busy`` runs."""
    gone = set(step.delete)
    kept = [s.state for s in slots if s.state is not SlotState.GOING and s.name not in gone]
    return Tally(ready=kept.count(SlotState.READY), waiting=kept.count(SlotState.WAITING) + step.create,
                 unschedulable=kept.count(SlotState.UNSCHEDULABLE), busy=busy)


@dataclass(frozen=True, slots=True)
class Advert:
    """What this node's presence entry says about its room."""

    capacity: int
    warm: int


def advertise(*, free: int, pool: Tally, busy: int, can_scale: bool, held: bool) -> Advert:
    """Free slots and warm slots, told truthfully (see the module doc), with ``busy`` runs in
    flight now: a run started since the pool was looked at has taken (or will preempt) a warm one."""
    if held or free <= 0:
        return Advert(0, 0)
    taken = max(0, busy - pool.busy)
    warm = min(max(0, pool.ready - taken), free)
    if not can_scale and pool.unschedulable > 0:
        return Advert(warm, warm)
    return Advert(free, warm)
