"""The parsed projection of the pipeline document: stories and presence, kept current from CRDT events.

:class:`Projection` is the reading half of :class:`~huskies_agent.pipeline.document.PipelineDoc`:
it parses only the stories and nodes a transaction changed, totally (any entry ends up parsed or
quarantined with a reason), and tells listeners what changed.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pycrdt import Map, MapEvent, TransactionEvent

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import (
    MalformedEntry,
    NodePresence,
    ParseLimits,
    Story,
    describe,
    parse_presence,
    read_story,
)

log = logging.getLogger("huskies_agent.pipeline.document")

_UNREAD: Any = object()
#: Above this many changed stories, parse the whole items map at once.
_BULK_PARSE = 64


@dataclass(frozen=True, slots=True)
class Changes:
    """What one transaction changed: story ids (added, edited or removed) and node ids."""

    stories: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    #: True when the change came from a remote peer rather than a local write.
    remote: bool = False

    def __bool__(self) -> bool:
        return bool(self.stories or self.nodes)


Listener = Callable[[Changes], None]

#: ``listener(update, remote)``: the binary (Yjs v1) update of one transaction and
#: whether it was applied from a peer (origin :data:`REMOTE_ORIGIN`).
UpdateListener = Callable[[bytes, bool], None]

#: Transaction origin used for updates received from a peer.
REMOTE_ORIGIN = "huskies-remote"


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Reading a large update leaves tens of MB free inside the heap (the update, its JSON
    text, the decoder's buffers): without this they stay in the process' RSS (about 150 MiB
    after a 100,000-story initial sync, bench/bench_operator.py).
    """
    trim = _MALLOC_TRIM
    if trim is not None:
        trim(0)


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


_MALLOC_TRIM = _find_malloc_trim()
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def _entries(text: str) -> Iterable[tuple[str, Any]]:
    """``(key, value)`` of a JSON object's text, decoded one entry at a time.

    Raises ValueError where the text is not one JSON object (the caller then reads the
    entries one by one instead).
    """
    end = len(text)

    def skip(i: int) -> int:
        while i < end and text[i] in _WHITESPACE:
            i += 1
        return i

    i = skip(0)
    if i >= end or text[i] != "{":
        raise ValueError("not a JSON object")
    i = skip(i + 1)
    if i < end and text[i] == "}":
        return
    while True:
        if i >= end or text[i] != '"':
            raise ValueError(f"expected a key at {i}")
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = skip(i)
        if i >= end or text[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        value, i = _DECODER.raw_decode(text, skip(i + 1))
        yield key, value
        i = skip(i)
        if i < end and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < end and text[i] == "}":
            return
        raise ValueError(f"expected ',' or '}}' at {i}")


class Projection:
    """Parsed stories and presence of ``_items``/``_nodes``; the subclass owns the document."""

    limits: ParseLimits
    _items: Map[Any]
    _nodes: Map[Any]

    def _init_projection(self) -> None:
        self._stories: dict[str, Story] = {}
        #: Ids of the stories in an active stage: what a full look at the pipeline needs to visit.
        self._active: set[str] = set()
        self._malformed: dict[str, str] = {}
        self._presence: dict[str, NodePresence] = {}
        self._bad_nodes: dict[str, str] = {}
        self._listeners: list[Listener] = []
        #: A bulk update's JSON text, the story ids it may have changed and its origin, until read.
        self._pending: tuple[str, set[str], bool] | None = None
        self._update_listeners: list[UpdateListener] = []

    def _parse_into_projection(self, story_id: str, fields: Any = _UNREAD) -> None:
        """Re-read one story into the projection (``fields``: its raw value, if already read).

        Total: whatever the entry holds, the story ends up either in ``stories`` or in
        ``malformed`` with a reason (logged once per distinct reason).
        """
        self._stories.pop(story_id, None)
        self._active.discard(story_id)
        try:
            if fields is _UNREAD:
                raw = self._items.get(story_id)
                fields = None if raw is None else self._decode(story_id, raw)
            if fields is None:
                self._malformed.pop(story_id, None)
                return
            story = read_story(story_id, fields, self.limits)
        except Exception as exc:  # MalformedEntry, or anything a hostile value provokes
            reason = str(exc) if isinstance(exc, MalformedEntry) else f"unreadable ({type(exc).__name__})"
            self._quarantine(self._malformed, "story", story_id, reason)
            return
        self._malformed.pop(story_id, None)
        self._stories[story_id] = story
        if story.stage in stages.ACTIVE_STAGES:
            self._active.add(story_id)

    def _decode(self, story_id: str, raw: Any) -> Any:
        """The plain value of one stored story, bounded by ``limits.max_entry_bytes``."""
        if not isinstance(raw, Map):
            return raw
        # One JSON round trip is about twice as fast as Map.to_py().
        text = str(raw)
        if len(text) > self.limits.max_entry_bytes:
            raise MalformedEntry(
                f"story {describe(story_id)} is quarantined: its entry is {len(text)} bytes "
                f"(at most {self.limits.max_entry_bytes})"
            )
        try:
            return json.loads(text)
        except RecursionError:
            raise MalformedEntry(
                f"story {describe(story_id)} is quarantined: it holds values nested too deep to decode"
            ) from None

    def _quarantine(self, into: dict[str, str], what: str, key: str, reason: str) -> None:
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        if into.get(key) != reason:
            log.warning("quarantined %s entry %s: %s", what, describe(key), reason)
        into[key] = reason

    def _parse_stories(self, story_ids: Iterable[str]) -> None:
        ids = story_ids if isinstance(story_ids, set | frozenset) else set(story_ids)
        if len(ids) > _BULK_PARSE:
            # Many stories at once (initial sync, bulk import): one JSON text of the whole map
            # (a call into pycrdt per story costs more), decoded one entry at a time, so that
            # only one story's plain value is alive at once, never the whole map's.
            left = set(ids)
            try:
                for story_id, fields in _entries(str(self._items)):
                    if story_id in left:
                        left.discard(story_id)
                        self._parse_into_projection(story_id, fields)
            except (ValueError, RecursionError, MemoryError):
                pass  # a hostile entry: read whatever is left one story at a time
            ids = left
        for story_id in ids:
            self._parse_into_projection(story_id)

    def _parse_presence(self, node_id: str) -> None:
        self._presence.pop(node_id, None)
        try:
            raw = self._nodes.get(node_id)
            if raw is None:
                self._bad_nodes.pop(node_id, None)
                return
            presence = parse_presence(node_id, raw, self.limits)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, MalformedEntry) else f"unreadable ({type(exc).__name__})"
            self._quarantine(self._bad_nodes, "node", node_id, reason)
            return
        self._bad_nodes.pop(node_id, None)
        self._presence[node_id] = presence

    def _reread_stories(self, *, remote: bool) -> None:
        """Re-read every story (after an update applied without change events) and tell
        listeners that all of them, and every one removed, may have changed."""
        before = set(self._stories) | set(self._malformed)
        now = set(self._items.keys())
        self._parse_stories(now | before)
        release_free_memory()
        self._notify(Changes(stories=frozenset(now | before), remote=remote))

    def _defer_reread(self, *, remote: bool) -> None:
        """Like :meth:`_reread_stories`, but the stories are read by :meth:`catch_up`."""
        before = set(self._stories) | set(self._malformed)
        self._pending = (str(self._items), before | set(self._items.keys()), remote)

    @property
    def catching_up(self) -> bool:
        """A bulk update's stories are not all read yet (see :meth:`catch_up`)."""
        return self._pending is not None

    async def catch_up(self, slice_size: int = 2000) -> None:
        """Read the stories of a deferred bulk update, ``slice_size`` at a time, yielding to
        the event loop between slices (a 100,000-story initial sync otherwise holds the
        loop for seconds: long enough to miss a Lease renewal). Then tell listeners, once.

        Nothing may change the stories meanwhile: the sync client reads no further frame
        until this returns.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        text, ids, remote = pending
        left = set(ids)
        done = 0
        try:
            for story_id, fields in _entries(text):
                if story_id in left:
                    left.discard(story_id)
                    self._parse_into_projection(story_id, fields)
                    done += 1
                    if done % slice_size == 0:
                        await asyncio.sleep(0)
        except (ValueError, RecursionError, MemoryError):
            pass  # a hostile entry: read whatever is left one story at a time
        finally:
            # Also when cancelled between slices: no story is left unread.
            del text
            for story_id in left:
                self._parse_into_projection(story_id)
            release_free_memory()
            self._notify(Changes(stories=frozenset(ids), remote=remote))

    def _refresh_all(self) -> None:
        self._parse_stories(self._items.keys())
        for key in list(self._nodes.keys()):
            self._parse_presence(key)

    def _on_items(self, events: list[Any]) -> None:
        # Reading (not writing) the document is allowed inside this callback, and it
        # receives every event of one transaction at once.
        changed: set[str] = set()
        remote = False
        for event in events:
            if not isinstance(event, MapEvent):
                continue
            remote = remote or event.transaction.origin == REMOTE_ORIGIN
            path = list(getattr(event, "path", ()))
            if path:
                changed.add(str(path[0]))
            else:
                changed.update(str(k) for k in getattr(event, "keys", {}))
        self._parse_stories(changed)
        self._notify(Changes(stories=frozenset(changed), remote=remote))

    def _on_nodes(self, event: Any) -> None:
        changed = {str(k) for k in event.keys}
        for node_id in changed:
            self._parse_presence(node_id)
        self._notify(Changes(nodes=frozenset(changed), remote=event.transaction.origin == REMOTE_ORIGIN))

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Inside a document-level callback even reading the document raises, so only
        # the event's own fields are used. The origin comes back as its hash.
        update: bytes = event.update
        origin = event.transaction.origin()  # type: ignore[attr-defined]
        remote = origin is not None and origin == hash(REMOTE_ORIGIN)
        for listener in list(self._update_listeners):
            try:
                listener(update, remote)
            except Exception:  # a listener bug must not break the transaction
                log.exception("document update listener failed")

    def _notify(self, changes: Changes) -> None:
        if not changes:
            return
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:  # a listener bug must not break replication
                log.exception("pipeline listener failed")
