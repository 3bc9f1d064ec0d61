"""The Yjs sync protocol (y-protocols), sans I/O.

Wire format, one message per WebSocket binary frame::

    varUint(0 SYNC)      varUint(0 STEP1)  varByteArray(state vector)
    varUint(0 SYNC)      varUint(1 STEP2)  varByteArray(update)       # answers a STEP1
    varUint(0 SYNC)      varUint(2 UPDATE) varByteArray(update)
    varUint(1 AWARENESS) varByteArray(awareness update)
    varUint(2 AUTH)      varUint(permission) varString(reason)        # y-websocket servers
    varUint(3 QUERY_AWARENESS)

``varUint`` is LEB128 (7 bits a byte, high bit = more bytes follow) and
``varByteArray(b) = varUint(len(b)) + b``.

:class:`SyncSession` is the per-connection state machine shared by the client and
the server. It turns received frames into document changes and reply frames and
tracks two things:

* **synced**: the peer answered our first STEP1 — we hold everything it had then;
* **confirmation**: every STEP1 we send takes a ticket in a FIFO; a peer processes
  messages in order, so each STEP2 it sends answers our oldest outstanding STEP1.
  When the STEP2 for a ticket arrives, the peer holds every update we sent before
  that STEP1, and we hold everything the peer had when it answered.

Nothing here does I/O; the caller moves the bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from huskies_agent.sync.updates import DEFAULT_MAX_VALUE_DEPTH, update_problem

#: Longest varUint accepted (10 bytes hold 70 bits, more than any real length).
_MAX_VARUINT_BYTES = 10


class ProtocolError(ValueError):
    """A frame that does not follow the protocol (garbage, truncated, wrong type)."""


class RefusedUpdate(ProtocolError):
    """A well-framed update this side must not apply (a value nested too deep for the CRDT library)."""


class Kind(enum.Enum):
    """The message kinds this implementation knows."""

    STEP1 = "step1"
    STEP2 = "step2"
    UPDATE = "update"
    AWARENESS = "awareness"
    AUTH = "auth"
    QUERY_AWARENESS = "query-awareness"


class MessageType(enum.IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(enum.IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


_SYNC_KINDS = {SyncType.STEP1: Kind.STEP1, SyncType.STEP2: Kind.STEP2, SyncType.UPDATE: Kind.UPDATE}
_SYNC_TYPES = {kind: sync_type for sync_type, kind in _SYNC_KINDS.items()}

#: An update that carries nothing (no structs, empty delete set).
EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded frame. ``payload`` is the state vector, update or awareness bytes.

    For AUTH messages ``payload`` is the UTF-8 reason and ``permission`` the
    permission type (0 = denied); QUERY_AWARENESS has an empty payload.
    """

    kind: Kind
    payload: bytes = b""
    permission: int = 0


# ---------------------------------------------------------------------- varints
def encode_var_uint(value: int) -> bytes:
    """LEB128 encoding of a non-negative integer."""
    if value < 0:
        raise ValueError(f"varUint cannot encode a negative number ({value})")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_var_uint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Read a varUint at ``pos``; returns ``(value, next position)``."""
    value = 0
    shift = 0
    for count in range(_MAX_VARUINT_BYTES):
        if pos + count >= len(data):
            raise ProtocolError("truncated varUint")
        byte = data[pos + count]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos + count + 1
    raise ProtocolError(f"varUint longer than {_MAX_VARUINT_BYTES} bytes")


def encode_var_bytes(data: bytes) -> bytes:
    return encode_var_uint(len(data)) + data


def decode_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = decode_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError(f"byte array of {length} bytes runs past the end of the frame")
    return data[pos:end], end


# ---------------------------------------------------------------------- messages
def encode(message: Message) -> bytes:
    """The frame for ``message``."""
    kind = message.kind
    if kind in _SYNC_TYPES:
        return bytes((MessageType.SYNC, _SYNC_TYPES[kind])) + encode_var_bytes(message.payload)
    if kind is Kind.AWARENESS:
        return bytes((MessageType.AWARENESS,)) + encode_var_bytes(message.payload)
    if kind is Kind.AUTH:
        return (
            bytes((MessageType.AUTH,))
            + encode_var_uint(message.permission)
            + encode_var_bytes(message.payload)
        )
    return bytes((MessageType.QUERY_AWARENESS,))


def encode_step1(state_vector: bytes) -> bytes:
    return encode(Message(Kind.STEP1, state_vector))


def encode_step2(update: bytes) -> bytes:
    return encode(Message(Kind.STEP2, update))


def encode_update(update: bytes) -> bytes:
    return encode(Message(Kind.UPDATE, update))


def decode(frame: bytes | bytearray | memoryview | str) -> Message:
    """Parse one frame; raises :class:`ProtocolError` for anything else than one message."""
    if isinstance(frame, str):
        raise ProtocolError("text frame (the protocol uses binary frames only)")
    data = bytes(frame)
    if not data:
        raise ProtocolError("empty frame")
    message_type, pos = decode_var_uint(data)
    if message_type == MessageType.SYNC:
        sync_type, pos = decode_var_uint(data, pos)
        try:
            kind = _SYNC_KINDS[SyncType(sync_type)]
        except ValueError:
            raise ProtocolError(f"unknown sync message type {sync_type}") from None
        payload, pos = decode_var_bytes(data, pos)
        message = Message(kind, payload)
    elif message_type == MessageType.AWARENESS:
        payload, pos = decode_var_bytes(data, pos)
        message = Message(Kind.AWARENESS, payload)
    elif message_type == MessageType.AUTH:
        permission, pos = decode_var_uint(data, pos)
        reason, pos = decode_var_bytes(data, pos)
        message = Message(Kind.AUTH, reason, permission)
    elif message_type == MessageType.QUERY_AWARENESS:
        message = Message(Kind.QUERY_AWARENESS)
    else:
        raise ProtocolError(f"unknown message type {message_type}")
    if pos != len(data):
        raise ProtocolError(f"{len(data) - pos} unexpected bytes after a {message.kind.value} message")
    return message


# ---------------------------------------------------------------------- session
class SyncTarget(Protocol):
    """The document operations a session needs (``PipelineDoc`` provides them)."""

    def state_vector(self) -> bytes: ...

    def encode_update(self, state_vector: bytes | None = None) -> bytes: ...

    def apply_remote(self, update: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Received:
    """What one received frame did."""

    message: Message
    #: Frame to send back (the STEP2 answering a peer's STEP1), if any.
    reply: bytes | None = None
    #: An update (STEP2 or UPDATE) was applied to the document.
    applied: bool = False
    #: The ticket of our STEP1 that this STEP2 answered.
    answered: int | None = None
    #: This frame completed the initial sync.
    synced_now: bool = False


class SyncSession:
    """Protocol state of one connection, on either side."""

    def __init__(self, doc: SyncTarget, *, max_value_depth: int = DEFAULT_MAX_VALUE_DEPTH) -> None:
        self._doc = doc
        self._max_value_depth = max_value_depth
        self._tickets: deque[int] = deque()
        self._next_ticket = 1
        self._synced = False
        self._answered_peer = False

    @property
    def synced(self) -> bool:
        """The peer answered our first STEP1."""
        return self._synced

    @property
    def answered_peer(self) -> bool:
        """We answered a STEP1 of the peer: it will hold everything we had then."""
        return self._answered_peer

    @property
    def outstanding(self) -> int:
        """STEP1s sent and not answered yet."""
        return len(self._tickets)

    def step1(self) -> tuple[int, bytes]:
        """A STEP1 frame of the current state, and its ticket.

        The caller must send frames in the order they were made: tickets are
        answered first in, first out.
        """
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets.append(ticket)
        return ticket, encode_step1(self._doc.state_vector())

    def update(self, update: bytes) -> bytes:
        """The frame for a local update."""
        return encode_update(update)

    def receive(self, frame: bytes | bytearray | memoryview | str) -> Received:
        """Handle one frame from the peer; raises :class:`ProtocolError` on bad input."""
        return self.handle(decode(frame))

    def check(self, message: Message) -> None:
        """Raise :class:`RefusedUpdate` if ``message`` carries an update this side must not
        apply. Pure (no state): a caller may run it in a worker thread for a large update and
        then pass ``checked=True`` to :meth:`handle`."""
        if message.kind in (Kind.STEP2, Kind.UPDATE) and message.payload != EMPTY_UPDATE:
            problem = update_problem(message.payload, max_depth=self._max_value_depth)
            if problem is not None:
                raise RefusedUpdate(f"refused update: {problem}")

    def handle(self, message: Message, *, checked: bool = False) -> Received:
        """Handle one decoded message from the peer (see :meth:`receive`); ``checked``: :meth:`check`
        already passed for this very message."""
        kind = message.kind
        if kind is Kind.STEP1:
            try:
                reply = encode_step2(self._doc.encode_update(message.payload))
            except ValueError as exc:
                raise ProtocolError(f"invalid state vector in step1: {exc}") from None
            self._answered_peer = True
            return Received(message, reply=reply)
        if kind is Kind.STEP2 or kind is Kind.UPDATE:
            applied = self._apply(message.payload, checked=checked)
            if kind is Kind.UPDATE:
                return Received(message, applied=applied)
            answered = self._tickets.popleft() if self._tickets else None
            synced_now = not self._synced
            self._synced = True
            return Received(message, applied=applied, answered=answered, synced_now=synced_now)
        return Received(message)

    def _apply(self, update: bytes, *, checked: bool = False) -> bool:
        if update == EMPTY_UPDATE:
            return False
        # Checked before the CRDT library decodes it: its decoder recurses in native
        # code, and a deep enough value kills the process instead of raising.
        problem = None if checked else update_problem(update, max_depth=self._max_value_depth)
        if problem is not None:
            raise RefusedUpdate(f"refused update: {problem}")
        try:
            self._doc.apply_remote(update)
        except ValueError as exc:
            raise ProtocolError(f"invalid update: {exc}") from None
        return True
