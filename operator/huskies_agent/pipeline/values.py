"""Reading values written by any peer: total, bounded, never trusting a type or a size.

Every value in the document may be of the wrong type, too deep, too long or too large. The
helpers here turn raw values into plain Python values or raise :class:`MalformedEntry`, which
callers turn into a quarantined entry with a reason. ``pipeline/model.py`` builds the records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Longest story id a build node works on. Branch names, labels and paths derive from it.
MAX_STORY_ID_LENGTH = 200

# Letters and digits of any script, then letters, digits, '.', '_' or '-'.
_STORY_ID_CHARS = re.compile(r"^[^\W_][\w.-]*$", re.UNICODE)


class MalformedEntry(ValueError):
    """A document entry that cannot be understood; the caller skips it and logs why."""


def story_id_problem(story_id: object) -> str | None:
    """Why ``story_id`` cannot be worked on, or ``None`` when it is acceptable.

    Acceptable ids make a valid git branch ``feature/story-<id>`` and are safe as a
    path component and command-line argument: 1..200 characters, starting with a
    letter or digit, then letters, digits, ``.``, ``_`` or ``-``; no ``..``; not
    ending in ``.`` or ``.lock``. Unicode letters are allowed.
    """
    if not isinstance(story_id, str):
        return f"story id is a {type(story_id).__name__}, not a string"
    if not story_id:
        return "story id is empty"
    if len(story_id) > MAX_STORY_ID_LENGTH:
        return f"story id is {len(story_id)} characters long (at most {MAX_STORY_ID_LENGTH})"
    if not _STORY_ID_CHARS.match(story_id) or not story_id.isprintable():
        return "story id may hold only letters, digits, '.', '_' and '-', starting with a letter or digit"
    if ".." in story_id or story_id.endswith(".") or story_id.endswith(".lock"):
        return "story id may not contain '..' or end in '.' or '.lock'"
    return None


def branch_for(story_id: str) -> str:
    """The git branch a story's work is pushed to."""
    return f"feature/story-{story_id}"


#: Largest whole number accepted from the document (JavaScript's safe integer range).
MAX_SAFE_INT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on what one document entry may hold before it is quarantined.

    ``max_depth``: nesting of lists and objects inside one entry (the entry itself is
    depth 1); ``max_string_length``: characters in any one string, key or value;
    ``max_entry_bytes``: the entry's JSON text. Defaults are far above anything the
    pipeline writes and far below what makes a parser or a log line misbehave.
    """

    max_depth: int = 16
    max_string_length: int = 65_536
    max_entry_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        if self.max_depth < 2 or self.max_string_length < MAX_STORY_ID_LENGTH or self.max_entry_bytes < 1024:
            raise ValueError(
                f"parse limits too small: max_depth >= 2, max_string_length >= {MAX_STORY_ID_LENGTH}, "
                "max_entry_bytes >= 1024"
            )


DEFAULT_LIMITS = ParseLimits()


def describe(value: object, width: int = 60) -> str:
    """A short, single-line, always-safe description of ``value`` for reasons and logs.

    Never recurses (``repr`` of a deeply nested list raises RecursionError) and never
    copies a giant string into a log line.
    """
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        text = repr(value[:width])
        return text if len(value) <= width else f"{text}... ({len(value)} characters)"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    return f"a {type(value).__name__}"


def value_problem(value: object, limits: ParseLimits = DEFAULT_LIMITS) -> str | None:
    """Why ``value`` (a decoded entry) is outside ``limits``, or ``None``.

    Walks the value without recursion, so any depth is safe to check. Rejects
    nesting deeper than ``max_depth``, strings and keys longer than
    ``max_string_length``, keys that are not strings, integers outside the safe
    range, non-finite numbers and types JSON cannot hold.
    """
    if _plainly_within(value, limits):
        return None
    stack: list[tuple[object, int]] = [(value, 1)]
    size = 0
    while stack:
        item, depth = stack.pop()
        # Roughly the item's JSON size: a guard against entries of many small values.
        size += len(item) + 8 if isinstance(item, str) else 8
        if size > limits.max_entry_bytes:
            return f"more than {limits.max_entry_bytes} bytes of values"
        if isinstance(item, str):
            if len(item) > limits.max_string_length:
                return f"a string of {len(item)} characters (at most {limits.max_string_length})"
            continue
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                return f"{describe(item)}, outside the safe integer range"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"a non-finite number ({item!r})"
            continue
        if not isinstance(item, list | tuple | Mapping):
            return f"a value of type {type(item).__name__}"
        if depth > limits.max_depth:
            return f"values nested deeper than {limits.max_depth} levels"
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"a key of type {type(key).__name__}"
                size += len(key)
                if len(key) > limits.max_string_length:
                    return f"a key of {len(key)} characters (at most {limits.max_string_length})"
                stack.append((child, depth + 1))
        else:
            stack.extend((child, depth + 1) for child in item)
    return None


def _scalar_size(item: object, max_string: int) -> int:
    """The size :func:`value_problem` counts for a plain scalar within limits; -1 for anything else."""
    kind = type(item)
    if kind is str:
        n = len(item)  # type: ignore[arg-type]
        return n + 8 if n <= max_string else -1
    if item is None or kind is bool:
        return 8
    if kind is int:
        return 8 if -MAX_SAFE_INT <= item <= MAX_SAFE_INT else -1  # type: ignore[operator]
    if kind is float:
        return 8 if math.isfinite(item) else -1  # type: ignore[arg-type]
    return -1


def _plainly_within(value: object, limits: ParseLimits) -> bool:
    """The shape every well-behaved writer stores, checked in one pass: True only where
    :func:`value_problem`'s walk finds no problem (same sizes, same bounds). An object of
    scalars, lists of scalars and objects of scalars or lists of scalars (a claim entry
    with its ``fails``), nested at most three levels. Anything else gets the full walk.

    A story entry is read on every change and 100,000 of them at an initial sync: this
    path is about five times faster than the general walk (bench/bench_operator.py).
    """
    if type(value) is not dict or limits.max_depth < 3:
        return False
    max_string = limits.max_string_length
    size = 8
    for key, child in value.items():
        if type(key) is not str or len(key) > max_string:
            return False
        size += len(key)
        part = _scalar_size(child, max_string)
        if part < 0:
            kind = type(child)
            if kind is list:
                part = 8
                for element in child:
                    element_size = _scalar_size(element, max_string)
                    if element_size < 0:
                        return False
                    part += element_size
            elif kind is dict:
                part = 8
                for inner_key, inner in child.items():
                    if type(inner_key) is not str or len(inner_key) > max_string:
                        return False
                    part += len(inner_key)
                    inner_size = _scalar_size(inner, max_string)
                    if inner_size < 0:
                        if type(inner) is not list:
                            return False
                        inner_size = 8
                        for element in inner:
                            element_size = _scalar_size(element, max_string)
                            if element_size < 0:
                                return False
                            inner_size += element_size
                    part += inner_size
            else:
                return False
        size += part
    return size <= limits.max_entry_bytes


def as_int(value: object, *, default: int = 0) -> int:
    """A whole number from a CRDT number (ints come back as floats); ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise MalformedEntry(f"expected a number, got {describe(value)}")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value == int(value):
        number = int(value)
    elif isinstance(value, str) and 0 < len(value) <= 20 and value.strip().lstrip("-").isdigit():
        number = int(value)
    if number is None:
        raise MalformedEntry(f"expected a whole number, got {describe(value)}")
    if not -MAX_SAFE_INT <= number <= MAX_SAFE_INT:
        raise MalformedEntry(f"expected a whole number in the safe range, got {describe(number)}")
    return number


def as_float(value: object, *, default: float = 0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool):
        raise MalformedEntry(f"expected a number, got {describe(value)}")
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int) and -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return float(value)
    raise MalformedEntry(f"expected a finite number, got {describe(value)}")


def as_bool(value: object, *, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MalformedEntry(f"expected true or false, got {describe(value)}")


def as_str(value: object, *, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    raise MalformedEntry(f"expected a string, got {describe(value)}")


def parse_depends_on(value: object) -> tuple[str, ...]:
    """Dependencies: a list of story ids, or one string of ids separated by commas/spaces."""
    if value is None or value == "" or (type(value) is list and not value):
        return ()
    if isinstance(value, str):
        parts = re.split(r"[,\s]+", value)
    elif isinstance(value, list | tuple):
        parts = [as_str(v) for v in value]
    else:
        raise MalformedEntry(f"depends_on must be a list or a string, got {describe(value)}")
    return tuple(p for p in (s.strip() for s in parts) if p)
