"""Fuzz the document reader: any value in any field is a story or a quarantined entry with a reason."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Map
from tests.fuzz.budget import fuzz
from tests.sync.hostile import nested_list

from huskies_agent.pipeline.document import STORY_FIELDS, PipelineDoc
from huskies_agent.pipeline.model import MalformedEntry, Story, parse_presence, read_story

_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["2_current", "3_qa", "", "-x", "../../x", "a\nb", "x" * 70_000, "9" * 5000]),
)
#: JSON-like values, plus the issue's hostile shapes.
VALUES = st.one_of(
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    ),
    st.integers(1, 3000).map(lambda depth: Deep(depth)),
    st.dictionaries(st.integers(), st.none(), min_size=1, max_size=2),   # non-string keys
)
class Deep:
    """A list nested ``depth`` deep, built inside the test (Hypothesis cannot print one)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def real(value: Any) -> Any:
    return nested_list(value.depth) if isinstance(value, Deep) else value


KEYS = st.one_of(st.sampled_from(["1_s", "2_s", "../../x", "", "-a", "a\nb", "x" * 300]), st.text(max_size=20))


def _total(key: str, raw: Any) -> Story | str:
    try:
        return read_story(key, raw)
    except MalformedEntry as exc:
        reason = str(exc)
        assert reason and len(reason) < 1000, "a reason, never a copy of the value"
        return reason


@fuzz(600)
@given(KEYS, st.dictionaries(st.sampled_from(sorted(STORY_FIELDS | {"extra"})), VALUES, max_size=5))
def test_any_story_fields_give_a_story_or_a_reason(key: str, fields: dict[str, Any]) -> None:
    outcome = _total(key, {"story_id": key, "stage": "2_current", **{k: real(v) for k, v in fields.items()}})
    if isinstance(outcome, Story):
        assert outcome.story_id == key and key not in outcome.depends_on
        assert 0 <= abs(outcome.retry_count) < 2**53


@fuzz(300)
@given(KEYS, VALUES)
def test_any_raw_entry_gives_a_story_or_a_reason(key: str, raw: Any) -> None:
    raw = real(raw)
    _total(key, raw)
    try:
        presence = parse_presence(key, raw)
    except MalformedEntry:
        pass
    else:
        assert math.isfinite(presence.last_seen)


def _storable(value: Any) -> bool:
    """Values pycrdt can store (it refuses non-string keys and ints past 64 bits at write time)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            return False
    return True


@fuzz(150)
@given(st.lists(st.tuples(KEYS, st.sampled_from(sorted(STORY_FIELDS)), VALUES), min_size=1, max_size=4))
def test_the_replicated_document_files_every_entry(writes: list[tuple[str, str, Any]]) -> None:
    """Written by one peer, read by another (incremental and bulk paths): every key is filed, none raises."""
    writer = PipelineDoc()
    planted: set[str] = set()
    with writer.doc.transaction():
        for key, field, drawn in writes:
            value = real(drawn)
            if not _storable(value):
                continue
            writer._items[key] = Map({"story_id": key, "stage": "2_current", field: value})
            planted.add(key)
    reader = PipelineDoc()
    reader.apply_remote(writer.encode_update())
    bulk = PipelineDoc()
    bulk.add_stories({"story_id": f"{n}_pad", "stage": "1_backlog"} for n in range(70))
    bulk.apply_remote(writer.encode_update())
    for doc in (writer, reader, bulk):
        for key in planted:
            assert (key in doc.stories) != (key in doc.malformed), key
