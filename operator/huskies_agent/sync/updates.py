"""A bounded reader of Yjs v1 updates: checks an update's shape before the CRDT library sees it.

The CRDT library decodes nested values recursively in native code: an update of about
100 KB holding a list nested 50 000 deep overflows its stack and kills the process
(a segfault, not an exception). :func:`update_problem` walks the update without
recursion and without building anything, and says why it must not be applied:
values nested deeper than allowed, lengths that run past the end, content kinds this
build does not know. Both ends of a connection run it on every update they receive.

Layout read here (lib0 encoding, as written by Yjs and yrs)::

    update     = varUint(#groups) group* deleteSet
    group      = varUint(#structs) varUint(client) varUint(clock) struct*
    struct     = info:u8 ( GC varUint(len) | SKIP varUint(len) | item )
    item       = [origin ID] [rightOrigin ID] [parent: varUint(1) varString | varUint(0) ID]
                 [parentSub varString] content
    deleteSet  = varUint(#clients) (varUint(client) varUint(#ranges) (varUint varUint)*)*

Values (``Any``) are tagged: 127 undefined, 126 null, 125 varInt, 124 float32,
123 float64, 122 bigint64, 121 false, 120 true, 119 string, 118 object, 117 array,
116 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Deepest nesting of lists/objects accepted in one value. Far above anything the
#: pipeline writes, far below what crashes the CRDT library (between 10 000 and 50 000).
DEFAULT_MAX_VALUE_DEPTH = 256

_BIT8, _BIT7, _BIT6 = 0x80, 0x40, 0x20
_GC, _SKIP = 0, 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
#: Shared-type refs (Array, Map, Text, XmlElement, XmlFragment, XmlHook, XmlText) and,
#: of those, the ones followed by a name.
_TYPE_REFS = range(7)
_NAMED_TYPE_REFS = (3, 5)
_MAX_VARUINT_BYTES = 10


class UpdateRefused(ValueError):
    """The update must not be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class UpdateShape:
    """What a well-formed update holds (for limits and logs)."""

    structs: int
    #: Deepest nesting of lists/objects in any value (0: scalars only).
    max_depth: int
    #: Longest string (content, key or value), in bytes.
    longest_string: int


class _Reader:
    __slots__ = ("data", "pos", "longest")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.longest = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise UpdateRefused("truncated update")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def var_uint(self) -> int:
        data, pos = self.data, self.pos
        end = min(len(data), pos + _MAX_VARUINT_BYTES)
        value = shift = 0
        while pos < end:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7
        if end == len(data):
            raise UpdateRefused("truncated update")
        raise UpdateRefused("varUint longer than 10 bytes")

    def var_int(self) -> None:
        self.var_uint()  # same length rules; the sign bit does not matter here

    def skip(self, count: int, what: str) -> None:
        if count > self.left:
            raise UpdateRefused(f"{what} of {count} bytes runs past the end of the update")
        self.pos += count

    def var_bytes(self, what: str = "byte array") -> int:
        length = self.var_uint()
        end = self.pos + length
        if end > len(self.data):
            raise UpdateRefused(f"{what} of {length} bytes runs past the end of the update")
        self.pos = end
        if length > self.longest:
            self.longest = length
        return length

    def count(self, what: str, min_bytes: int = 1) -> int:
        """A repeat count, refused when the rest of the update cannot hold that many items."""
        number = self.var_uint()
        if number * min_bytes > self.left:
            raise UpdateRefused(f"{number} {what} cannot fit in the {self.left} bytes left")
        return number


def _any(reader: _Reader, max_depth: int) -> int:
    """Skip one value; returns its nesting depth. Iterative: any input is safe."""
    # Each frame: [values left, is an object (a key precedes each value)].
    frames: list[list[int]] = []
    deepest = 0
    pending = 1  # values to read at the current level before popping
    in_object = False
    while True:
        if pending == 0:
            if not frames:
                return deepest
            pending, flag = frames.pop()
            in_object = bool(flag)
            continue
        pending -= 1
        if in_object:
            reader.var_bytes("object key")
        tag = reader.byte()
        if tag in (127, 126, 121, 120):
            continue
        if tag == 125:
            reader.var_int()
        elif tag == 124:
            reader.skip(4, "float32")
        elif tag in (123, 122):
            reader.skip(8, "float64")
        elif tag in (119, 116):
            reader.var_bytes("string")
        elif tag in (118, 117):
            is_object = tag == 118
            length = reader.count("object entries" if is_object else "array values", 2 if is_object else 1)
            frames.append([pending, int(in_object)])
            if len(frames) > max_depth:
                raise UpdateRefused(f"a value nested deeper than {max_depth} levels")
            deepest = max(deepest, len(frames))
            pending, in_object = length, is_object
        else:
            raise UpdateRefused(f"unknown value tag {tag}")


def _item(reader: _Reader, info: int, max_depth: int) -> int:
    if info & _BIT8:
        reader.var_uint()
        reader.var_uint()
    if info & _BIT7:
        reader.var_uint()
        reader.var_uint()
    if not info & (_BIT8 | _BIT7):
        if reader.var_uint() == 1:
            reader.var_bytes("parent name")
        else:
            reader.var_uint()
            reader.var_uint()
        if info & _BIT6:
            reader.var_bytes("parent key")
    ref = info & 0x1F
    depth = 0
    if ref == _DELETED:
        reader.var_uint()
    elif ref == _JSON:
        for _ in range(reader.count("JSON values")):
            reader.var_bytes("JSON value")
    elif ref in (_BINARY, _STRING, _EMBED):
        reader.var_bytes("content")
    elif ref == _FORMAT:
        reader.var_bytes("format key")
        reader.var_bytes("format value")
    elif ref == _TYPE:
        type_ref = reader.var_uint()
        if type_ref not in _TYPE_REFS:
            raise UpdateRefused(f"unknown shared type {type_ref}")
        if type_ref in _NAMED_TYPE_REFS:
            reader.var_bytes("type name")
    elif ref == _ANY:
        for _ in range(reader.count("values")):
            depth = max(depth, _any(reader, max_depth))
    elif ref == _DOC:
        reader.var_bytes("document guid")
        depth = _any(reader, max_depth)
    else:
        raise UpdateRefused(f"unknown content kind {ref}")
    return depth


def inspect_update(update: bytes, *, max_depth: int = DEFAULT_MAX_VALUE_DEPTH) -> UpdateShape:
    """The shape of a Yjs v1 ``update``; raises :class:`UpdateRefused` when it must not be applied."""
    reader = _Reader(bytes(update))
    structs = deepest = 0
    for _ in range(reader.count("struct groups", 3)):
        number = reader.count("structs")
        reader.var_uint()  # client
        reader.var_uint()  # clock
        for _ in range(number):
            info = reader.byte()
            structs += 1
            if info & 0x1F in (_GC, _SKIP):
                reader.var_uint()
            else:
                deepest = max(deepest, _item(reader, info, max_depth))
    for _ in range(reader.count("delete-set clients", 2)):
        reader.var_uint()
        for _ in range(reader.count("deleted ranges", 2)):
            reader.var_uint()
            reader.var_uint()
    return UpdateShape(structs=structs, max_depth=deepest, longest_string=reader.longest)


class _Doubt(Exception):
    """The quick walk met something it leaves to :func:`inspect_update`."""


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A varUint of two or more bytes at ``pos``: (value, next position)."""
    value = shift = 0
    for i in range(pos, min(len(data), pos + _MAX_VARUINT_BYTES)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise _Doubt


def _quickly_within(data: bytes, max_depth: int) -> bool:
    """The walk of :func:`inspect_update` in one function with one-byte varUints read in
    line (a 100,000-story initial sync is a 26 MB update of 800,000 structs). True only
    where that walk accepts the update; anything unusual (a truncation, a bound reached, a
    rare content kind) answers False and the careful walk says why. The repeated
    ``if data[pos] < 0x80`` lines are that inlining: a call per varUint doubles the time."""
    end = len(data)
    pos = 0
    try:
        if data[pos] < 0x80:
            groups, pos = data[pos], pos + 1
        else:
            groups, pos = _uint(data, pos)
        if groups * 3 > end - pos:
            return False
        for _ in range(groups):
            if data[pos] < 0x80:
                number, pos = data[pos], pos + 1
            else:
                number, pos = _uint(data, pos)
            if number > end - pos:
                return False
            for _ in range(2):  # client, clock
                if data[pos] < 0x80:
                    pos += 1
                else:
                    pos = _uint(data, pos)[1]
            for _ in range(number):
                info = data[pos]
                pos += 1
                ref = info & 0x1F
                if ref == _GC or ref == _SKIP:
                    if data[pos] < 0x80:
                        pos += 1
                    else:
                        pos = _uint(data, pos)[1]
                    continue
                # origin and right origin: two varUints each; else the parent (and its key)
                ids = (2 if info & _BIT8 else 0) + (2 if info & _BIT7 else 0)
                for _ in range(ids):
                    if data[pos] < 0x80:
                        pos += 1
                    else:
                        pos = _uint(data, pos)[1]
                if not ids:
                    if data[pos] < 0x80:
                        named, pos = data[pos], pos + 1
                    else:
                        named, pos = _uint(data, pos)
                    if named == 1:
                        if data[pos] < 0x80:
                            length, pos = data[pos], pos + 1
                        else:
                            length, pos = _uint(data, pos)
                        pos += length
                    else:
                        for _ in range(2):
                            if data[pos] < 0x80:
                                pos += 1
                            else:
                                pos = _uint(data, pos)[1]
                    if info & _BIT6:
                        if data[pos] < 0x80:
                            length, pos = data[pos], pos + 1
                        else:
                            length, pos = _uint(data, pos)
                        pos += length
                if ref == _ANY:
                    if data[pos] < 0x80:
                        pending, pos = data[pos], pos + 1
                    else:
                        pending, pos = _uint(data, pos)
                    if pending > end - pos:
                        return False
                    # The values' nesting, as in _any: (values left, inside an object) per level.
                    frames: list[tuple[int, bool]] = []
                    in_object = False
                    while True:
                        if pending == 0:
                            if not frames:
                                break
                            pending, in_object = frames.pop()
                            continue
                        pending -= 1
                        if in_object:
                            if data[pos] < 0x80:
                                length, pos = data[pos], pos + 1
                            else:
                                length, pos = _uint(data, pos)
                            pos += length
                        tag = data[pos]
                        pos += 1
                        if tag == 119 or tag == 116:  # string, bytes
                            if data[pos] < 0x80:
                                length, pos = data[pos], pos + 1
                            else:
                                length, pos = _uint(data, pos)
                            pos += length
                        elif tag == 125:  # varInt
                            if data[pos] < 0x80:
                                pos += 1
                            else:
                                pos = _uint(data, pos)[1]
                        elif tag == 127 or tag == 126 or tag == 121 or tag == 120:
                            pass
                        elif tag == 123 or tag == 122:
                            pos += 8
                        elif tag == 124:
                            pos += 4
                        elif tag == 118 or tag == 117:
                            if data[pos] < 0x80:
                                length, pos = data[pos], pos + 1
                            else:
                                length, pos = _uint(data, pos)
                            if length * (2 if tag == 118 else 1) > end - pos or len(frames) >= max_depth:
                                return False
                            frames.append((pending, in_object))
                            pending, in_object = length, tag == 118
                        else:
                            return False
                        if pos > end:
                            return False
                elif ref == _STRING or ref == _BINARY or ref == _EMBED:
                    if data[pos] < 0x80:
                        length, pos = data[pos], pos + 1
                    else:
                        length, pos = _uint(data, pos)
                    pos += length
                elif ref == _TYPE:
                    type_ref = data[pos]
                    pos += 1
                    if type_ref not in _TYPE_REFS:
                        return False
                    if type_ref in _NAMED_TYPE_REFS:
                        if data[pos] < 0x80:
                            length, pos = data[pos], pos + 1
                        else:
                            length, pos = _uint(data, pos)
                        pos += length
                elif ref == _DELETED:
                    if data[pos] < 0x80:
                        pos += 1
                    else:
                        pos = _uint(data, pos)[1]
                else:  # JSON, format, sub-document: rare, read by the careful walk
                    return False
                if pos > end:
                    return False
        if _delete_set_fits(data, pos):
            return True
    except (_Doubt, IndexError):
        pass
    return False


def _delete_set_fits(data: bytes, pos: int) -> bool:
    end = len(data)
    clients, pos = _uint_any(data, pos)
    if clients * 2 > end - pos:
        return False
    for _ in range(clients):
        pos = _uint_any(data, pos)[1]
        ranges, pos = _uint_any(data, pos)
        if ranges * 2 > end - pos:
            return False
        for _ in range(2 * ranges):
            pos = _uint_any(data, pos)[1]
    return pos <= end


def _uint_any(data: bytes, pos: int) -> tuple[int, int]:
    if data[pos] < 0x80:
        return data[pos], pos + 1
    return _uint(data, pos)


def update_problem(update: bytes, *, max_depth: int = DEFAULT_MAX_VALUE_DEPTH) -> str | None:
    """Why ``update`` must not be applied, or ``None``.

    Nesting ``max_depth`` deep takes at least that many list/object tags, so an update
    with fewer such bytes is safe without a full read (most live updates).
    """
    if update.count(b"\x75") + update.count(b"\x76") <= max_depth:
        return None
    if _quickly_within(bytes(update), max_depth):
        return None
    try:
        inspect_update(update, max_depth=max_depth)
    except UpdateRefused as exc:
        return str(exc)
    return None
