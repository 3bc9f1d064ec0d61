"""The pipeline CRDT document: the only module that touches pycrdt types.

Layout of the shared document (schema version 1; claim protocol v2, docs/claims.md)::

    meta   : Map   {"schema_version": 1}
    items  : Map   story_id -> Map {story_id, name, stage, agent, retry_count,
                                    blocked, depends_on, last_error,      # plain fields
                                    "claim@<node>":  {"epoch", "stage", "held", "at", "fails"},
                                    "stage@<writer>": {"stage", "epoch", "human"?}}
    nodes  : Map   node_id  -> {"node_id", "address", "last_seen", "alive", "capacity", "seq"}

Rules that keep replicas from silently losing data:

* Only the author of a story (the huskies server or ``huskies-agent stories add``)
  creates its nested ``Map``. Build nodes only write keys of an existing story, so
  two nodes never race to create the same nested Map (one subtree would be lost).
* Every claim and stage move is a key only its owner writes, so no concurrent write
  to one key is ever settled by Yjs' client-id tie-break; every replica computes the
  same winners from the entries by ``(epoch, node)`` (``model.resolve``). The plain
  ``stage`` is the author's stage (epoch 0); ``retry_count`` and a single ``claim``
  value of older writers are read, never written.
* A node writes only its own ``nodes`` entry, one key per transaction, so presence
  updates do not grow the document.

The class keeps a parsed projection (``stories``, ``nodes``) updated incrementally
from CRDT events, so readers never walk the whole document on each change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any

from pycrdt import Doc, Map, Subscription

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import (
    CLAIM_PREFIX,
    DEFAULT_LIMITS,
    MAX_FAILS,
    STAGE_PREFIX,
    Claim,
    MalformedEntry,
    NodePresence,
    ParseLimits,
    StageMove,
    Story,
)
from huskies_agent.pipeline.projection import (
    REMOTE_ORIGIN as REMOTE_ORIGIN,
)
from huskies_agent.pipeline.projection import (
    Changes as Changes,
)
from huskies_agent.pipeline.projection import (
    Listener as Listener,
)
from huskies_agent.pipeline.projection import (
    Projection,
)
from huskies_agent.pipeline.projection import (
    UpdateListener as UpdateListener,
)

SCHEMA_VERSION = 1
#: A remote update at least this large, and at least an eighth of all bytes applied so far,
#: is applied without the per-story change events (see :meth:`PipelineDoc.apply_remote`).
BULK_UPDATE_BYTES = 256 * 1024
STORY_FIELDS = frozenset(
    {"story_id", "name", "stage", "agent", "retry_count", "blocked", "depends_on", "last_error", "claim"}
)

log = logging.getLogger(__name__)


class StoryNotFound(KeyError):
    pass


class PipelineDoc(Projection):
    """Typed access to the replicated pipeline document."""

    def __init__(self, doc: Doc[Any] | None = None, *, limits: ParseLimits = DEFAULT_LIMITS) -> None:
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.limits = limits
        self._meta: Map[Any] = self.doc.get("meta", type=Map)
        self._items: Map[Any] = self.doc.get("items", type=Map)
        self._nodes: Map[Any] = self.doc.get("nodes", type=Map)
        self._init_projection()
        self._presence_seq: dict[str, int] = {}
        #: Bytes of remote updates applied so far: what makes an update "bulk" (apply_remote).
        self._bytes_applied = 0
        #: Leave the reading of a bulk update's stories to :meth:`catch_up` (the sync client
        #: sets this, so 100,000 stories are read in slices and its event loop keeps running).
        self.defer_bulk = False
        self._doc_sub: Subscription | None = None
        self._subs: list[Subscription] = [
            self._items.observe_deep(self._on_items),
            self._nodes.observe(self._on_nodes),
        ]
        self._refresh_all()

    # ------------------------------------------------------------------ reading
    @property
    def stories(self) -> Mapping[str, Story]:
        """Every well-formed story, by id."""
        return self._stories

    @property
    def active_ids(self) -> AbstractSet[str]:
        """Ids of the well-formed stories in an active stage (kept current; do not modify)."""
        return self._active

    @property
    def malformed(self) -> Mapping[str, str]:
        """Story keys that could not be parsed, with the reason."""
        return self._malformed

    @property
    def nodes(self) -> Mapping[str, NodePresence]:
        return self._presence

    @property
    def malformed_nodes(self) -> Mapping[str, str]:
        """Node entries that could not be parsed, with the reason."""
        return self._bad_nodes

    @property
    def schema_version(self) -> int | None:
        value = self._meta.get("schema_version")
        return int(value) if isinstance(value, int | float) else None

    def story(self, story_id: str) -> Story | None:
        return self._stories.get(story_id)

    def __len__(self) -> int:
        return len(self._stories)

    # ------------------------------------------------------------------ listening
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after each transaction that changed stories or nodes.

        Listeners run inside pycrdt's callback: they must not write to the document
        (hand work to a queue instead). Returns a function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def observe_updates(self, listener: UpdateListener) -> Callable[[], None]:
        """Call ``listener(update, remote)`` after each transaction that changed the document.

        ``update`` is the transaction's binary update, ready to send to a peer or to
        append to a log; ``remote`` is True for updates applied with
        :meth:`apply_remote`. Transactions that changed nothing (e.g. a duplicate
        remote update) are not reported. Like :meth:`add_listener`, the listener runs
        inside pycrdt's callback: it must not touch the document. An exception it
        raises is logged and swallowed. Returns a function that removes the listener.
        """
        self._update_listeners.append(listener)
        if self._doc_sub is None:
            self._doc_sub = self.doc.observe(self._on_transaction)

        def remove() -> None:
            if listener in self._update_listeners:
                self._update_listeners.remove(listener)

        return remove

    def close(self) -> None:
        """Detach observers (never call from inside a pycrdt callback)."""
        if self._subs:
            items_sub, nodes_sub = self._subs
            self._items.unobserve(items_sub)
            self._nodes.unobserve(nodes_sub)
        self._subs = []
        if self._doc_sub is not None:
            self.doc.unobserve(self._doc_sub)
            self._doc_sub = None
        self._listeners.clear()
        self._update_listeners.clear()

    # ------------------------------------------------------------------ sync helpers
    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def encode_update(self, state_vector: bytes | None = None) -> bytes:
        return self.doc.get_update(state_vector)

    def apply_remote(self, update: bytes) -> None:
        bulk = len(update) >= BULK_UPDATE_BYTES and len(update) * 8 >= self._bytes_applied
        self._bytes_applied += len(update)
        if not bulk:
            with self.doc.transaction(origin=REMOTE_ORIGIN):
                self.doc.apply_update(update)
            return
        # An update about as large as the document (an initial sync): pycrdt would wrap every
        # changed story in Python event objects (1.4 s of CPU for 100,000 stories) to tell
        # which ones changed; re-reading the whole map costs less, and at most eight times
        # what reading the update's own stories would (so a large update buys no more).
        items_sub = self._subs[0] if self._subs else None
        if items_sub is not None:
            self._items.unobserve(items_sub)
        try:
            with self.doc.transaction(origin=REMOTE_ORIGIN):
                self.doc.apply_update(update)
        finally:
            if items_sub is not None:
                self._subs[0] = self._items.observe_deep(self._on_items)
        if self.defer_bulk:
            self._defer_reread(remote=True)  # the caller awaits catch_up() before reading
        else:
            self._reread_stories(remote=True)

    # ------------------------------------------------------------------ writing
    def ensure_schema(self) -> None:
        if self.schema_version is None:
            self._meta["schema_version"] = SCHEMA_VERSION

    def add_story(
        self,
        story_id: str,
        *,
        stage: str = stages.BACKLOG,
        name: str = "",
        agent: str = "",
        depends_on: Iterable[str] = (),
    ) -> Story:
        """Create a story. Only a story's author calls this (see module docstring)."""
        if not stages.is_stage(stage):
            raise ValueError(f"unknown stage {stage!r}")
        if story_id in self._items:
            raise ValueError(f"story {story_id!r} already exists")
        fields: dict[str, Any] = {
            "story_id": story_id,
            "name": name,
            "stage": stage,
            "agent": agent,
            "retry_count": 0,
            "blocked": False,
            "depends_on": list(depends_on),
        }
        with self.doc.transaction():
            self.ensure_schema()
            self._items[story_id] = Map(fields)
        story = self._stories.get(story_id)
        assert story is not None
        return story

    def add_stories(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Create many stories in one transaction (bulk import, tests and benchmarks)."""
        count = 0
        with self.doc.transaction():
            self.ensure_schema()
            for entry in entries:
                story_id = str(entry["story_id"])
                if story_id in self._items:
                    continue
                fields = {
                    "story_id": story_id,
                    "name": "",
                    "agent": "",
                    "retry_count": 0,
                    "blocked": False,
                    "depends_on": [],
                }
                fields.update(entry)
                self._items[story_id] = Map(fields)
                count += 1
        return count

    def put_raw(self, story_id: str, **fields: Any) -> None:
        """Write raw fields of an existing story (also used to plant malformed data in tests)."""
        item = self._item(story_id)
        with self.doc.transaction():
            for key, value in fields.items():
                item[key] = value

    def remove_story(self, story_id: str) -> None:
        with self.doc.transaction():
            if story_id in self._items:
                del self._items[story_id]

    # Claim protocol v2 (docs/claims.md): every write below touches only keys its writer
    # owns (``claim@<node>``, ``stage@<writer>``) plus plain informational fields, and is
    # conditioned on this replica's view. Readers resolve the winners (model.resolve).

    def human_writer(self) -> str:
        """The writer id of a person's edits made through this replica."""
        return f"cli-{self.doc.client_id}"

    def move(self, story_id: str, stage: str, *, writer: str | None = None) -> None:
        """A person moves the story: a stage move above every epoch, fencing any running claim."""
        if not stages.is_stage(stage):
            raise ValueError(f"unknown stage {stage!r}")
        story = self._require(story_id)
        move = StageMove(writer or self.human_writer(), stage, story.top_epoch + 1, human=True)
        self._item(story_id)[STAGE_PREFIX + move.writer] = move.to_raw()

    def set_blocked(
        self, story_id: str, blocked: bool, *, reset_retries: bool = False, writer: str | None = None
    ) -> None:
        """Block or unblock. ``reset_retries`` voids the counted failures with a stage move
        (same stage, above every epoch) when there are any; with none it fences nothing."""
        story = self._require(story_id)
        item = self._item(story_id)
        with self.doc.transaction():
            item["blocked"] = blocked
            if reset_retries and story.retry_count > 0:
                move = StageMove(writer or self.human_writer(), story.stage, story.top_epoch + 1, human=True)
                item[STAGE_PREFIX + move.writer] = move.to_raw()

    def release_held_by(self, node: str, *, writer: str | None = None) -> dict[str, Story]:
        """A person frees every story ``node``'s claim holds (``huskies-agent release``), in one transaction.

        Nobody writes another's key: each gets a person's move of the writer's own to the stage it
        is in, above every epoch, which fences the claim (docs/claims.md). Returns them as they were.
        """
        held = {sid: story for sid, story in self._stories.items() if story.claimed_by == node}
        with self.doc.transaction():
            for story_id, story in held.items():
                move = StageMove(writer or self.human_writer(), story.stage, story.top_epoch + 1, human=True)
                self._item(story_id)[STAGE_PREFIX + move.writer] = move.to_raw()
        return held

    def claim(self, story_id: str, node: str, now: float) -> Claim:
        """Write ``node``'s claim above every epoch of the story, for its current stage."""
        story = self._require(story_id)
        own = story.entry_of(node)
        claim = Claim(node=node, epoch=story.top_epoch + 1, at=now, stage=story.stage, held=True,
                      fails=own.fails if own else ())
        self._item(story_id)[CLAIM_PREFIX + node] = claim.to_raw()
        return claim

    def claim_many(self, story_ids: Iterable[str], node: str, now: float) -> dict[str, Claim]:
        """Claim several stories in one transaction (one update on the wire).

        Ids that are not (or no longer) well-formed stories are left out of the result.
        """
        claims: dict[str, Claim] = {}
        with self.doc.transaction():
            for story_id in story_ids:
                if story_id in self._stories:
                    claims[story_id] = self.claim(story_id, node, now)
        return claims

    def release(self, story_id: str, node: str, now: float) -> bool:
        """Mark ``node``'s claim released, if (in this replica's view) it is the winning claim."""
        story = self._stories.get(story_id)
        if story is None or story.claim is None or story.claim.node != node:
            return False
        self._item(story_id)[CLAIM_PREFIX + node] = replace(story.claim, held=False, at=now).to_raw()
        return True

    def _holds(self, story_id: str, node: str, epoch: int, stage: str) -> Story | None:
        story = self._stories.get(story_id)
        if story is None or story.claim is None or story.claim.order != (epoch, node):
            return None
        if story.stage != stage or not stages.is_active(stage):
            return None
        return story

    def complete(self, story_id: str, node: str, epoch: int, stage: str, now: float) -> str | None:
        """Advance a story whose ``stage`` run at ``epoch`` succeeded, releasing the claim.

        Only while ``node``'s claim at ``epoch`` wins and the story is still in ``stage``
        (an active one). Writes ``stage@node`` at the claim's epoch and the released claim
        in one transaction. Returns the new stage, or ``None`` when nothing was written.
        """
        story = self._holds(story_id, node, epoch, stage)
        if story is None or story.claim is None:
            return None
        new_stage = stages.next_stage(stage)
        item = self._item(story_id)
        with self.doc.transaction():
            item[STAGE_PREFIX + node] = StageMove(node, new_stage, epoch).to_raw()
            item[CLAIM_PREFIX + node] = replace(story.claim, held=False, at=now).to_raw()
            item["last_error"] = ""
        return new_stage

    def record_failure(
        self, story_id: str, node: str, epoch: int, stage: str, now: float, *, reason: str, max_retries: int
    ) -> tuple[int, bool] | None:
        """Count a failed run of ``stage`` at ``epoch``, release the claim, block at ``max_retries``.

        Same condition as :meth:`complete`. Returns ``(retry_count, blocked)``, or
        ``None`` when the failure is not ours to count.
        """
        story = self._holds(story_id, node, epoch, stage)
        if story is None or story.claim is None:
            return None
        counted = {e for c in story.claims for e in c.fails if e > story.stage_epoch}
        retries = story.retry_count + (0 if epoch in counted else 1)
        blocked = retries >= max_retries
        fails = (*story.claim.fails, epoch)[-MAX_FAILS:]
        item = self._item(story_id)
        with self.doc.transaction():
            item[CLAIM_PREFIX + node] = replace(story.claim, held=False, at=now, fails=fails).to_raw()
            item["last_error"] = reason[:500]
            if blocked:
                item["blocked"] = True
        return retries, blocked

    def put_presence(self, presence: NodePresence) -> None:
        """Write this node's own presence entry with a ``seq`` above any it wrote before."""
        known = self._presence.get(presence.node_id)
        seq = max(self._presence_seq.get(presence.node_id, 0), known.seq if known else 0) + 1
        self._presence_seq[presence.node_id] = seq
        self._nodes[presence.node_id] = replace(presence, seq=seq).to_raw()

    # ------------------------------------------------------------------ internals
    def _require(self, story_id: str) -> Story:
        """The parsed story, or StoryNotFound / MalformedEntry (the projection's reason)."""
        story = self._stories.get(story_id)
        if story is not None:
            return story
        if story_id in self._malformed:
            raise MalformedEntry(f"story {story_id!r} is malformed: {self._malformed[story_id]}")
        raise StoryNotFound(story_id)

    def _item(self, story_id: str) -> Map[Any]:
        try:
            item = self._items[story_id]
        except KeyError:
            raise StoryNotFound(story_id) from None
        if not isinstance(item, Map):
            raise MalformedEntry(f"story {story_id!r} is not a map")
        return item
