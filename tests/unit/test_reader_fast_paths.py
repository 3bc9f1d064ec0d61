"""The document reader's fast paths give exactly what the general code gives.

``values._plainly_within`` may say "fine" only where ``value_problem``'s full walk finds no
problem; ``projection._entries`` decodes a JSON object's text one entry at a time to what
``json.loads`` gives; a bulk remote update (read without change events) leaves the same
projection, and tells listeners of every story, as the same update applied story by story.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from huskies_agent.pipeline import document, values
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import MAX_SAFE_INT, ParseLimits
from huskies_agent.pipeline.projection import Changes, _entries
from huskies_agent.pipeline.values import _plainly_within, value_problem

SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
LIMITS = st.builds(ParseLimits, max_depth=st.integers(2, 5), max_string_length=st.integers(200, 400),
                   max_entry_bytes=st.integers(1024, 1400))


def slow_walk(value: object, limits: ParseLimits) -> str | None:
    """value_problem with the fast path switched off."""
    saved = values._plainly_within
    values._plainly_within = lambda *_: False  # type: ignore[assignment]
    try:
        return value_problem(value, limits)
    finally:
        values._plainly_within = saved


@given(st.dictionaries(st.text(max_size=300), VALUES, max_size=8), LIMITS)
def test_fast_check_never_accepts_what_the_walk_refuses(value: dict[str, Any], limits: ParseLimits) -> None:
    if _plainly_within(value, limits):
        assert slow_walk(value, limits) is None
    assert (value_problem(value, limits) is None) == (slow_walk(value, limits) is None)


@pytest.mark.parametrize("value", [
    {"name": "x" * 401}, {"n": MAX_SAFE_INT + 1}, {"f": math.inf}, {"l": [[1]]}, {"d": {"e": {"f": 1}}},
    {"d": {"l": [[]]}}, {"blob": "y" * 1100}, {1: "int key"},
])
def test_fast_check_leaves_edge_cases_to_the_walk(value: dict[Any, Any]) -> None:
    limits = ParseLimits(max_depth=16, max_string_length=400, max_entry_bytes=1024)
    assert not _plainly_within(value, limits)


def test_fast_check_accepts_the_shapes_writers_store() -> None:
    story = {"story_id": "1_a", "name": "A", "stage": "2_current", "agent": "", "retry_count": 0,
             "blocked": False, "depends_on": ["0_b"], "claim@n1": {"epoch": 2, "stage": "2_current",
                                                                  "held": True, "at": 1.5, "fails": [1]},
             "stage@n1": {"stage": "3_qa", "epoch": 1}}
    assert _plainly_within(story, ParseLimits())


@given(st.dictionaries(st.text(max_size=10), VALUES.filter(lambda v: not _has_nonfinite(v)), max_size=6),
       st.booleans())
def test_entries_decode_like_json_loads(obj: dict[str, Any], spaced: bool) -> None:
    text = json.dumps(obj, indent=1 if spaced else None, separators=None if spaced else (",", ":"))
    assert dict(_entries(text)) == json.loads(text)


@pytest.mark.parametrize("text", ["", "[]", '{"a" 1}', '{"a":1 "b":2}', '{"a":1', "{1:2}"])
def test_entries_refuse_what_is_not_one_object(text: str) -> None:
    with pytest.raises(ValueError):
        dict(_entries(text))


def _has_nonfinite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    return False


def test_bulk_update_gives_the_same_projection_and_names_every_story() -> None:
    author = PipelineDoc()
    author.add_stories([{"story_id": f"{i}_s", "stage": "2_current", "name": "n" * 300} for i in range(1200)])
    author.put_raw("7_s", blocked="maybe")  # quarantined either way
    author.claim("8_s", "n1", 1.0)
    update = author.encode_update()
    assert len(update) >= document.BULK_UPDATE_BYTES

    bulk = PipelineDoc()
    seen: list[Changes] = []
    bulk.add_listener(seen.append)
    bulk.apply_remote(update)
    assert len(seen) == 1 and seen[0].remote and len(seen[0].stories) == 1200

    slow = PipelineDoc()
    slow._bytes_applied = 10 * len(update)  # too small a share: applied with change events
    slow.apply_remote(update)
    assert dict(bulk.stories) == dict(slow.stories) and len(bulk.stories) == 1199
    assert dict(bulk.malformed) == dict(slow.malformed) and "7_s" in bulk.malformed
    assert bulk.story("8_s") is not None and bulk.story("8_s").claimed_by == "n1"  # type: ignore[union-attr]

    # After the bulk update, change events flow again: a removal and an edit are seen.
    author.remove_story("3_s")
    author.put_raw("4_s", blocked=True)
    seen.clear()
    bulk.apply_remote(author.encode_update(bulk.state_vector()))
    assert {"3_s", "4_s"} <= set().union(*(c.stories for c in seen))
    assert bulk.story("3_s") is None and bulk.story("4_s").blocked  # type: ignore[union-attr]


def test_bulk_update_reports_removed_stories() -> None:
    author = PipelineDoc()
    author.add_stories([{"story_id": f"{i}_s", "stage": "5_done", "name": "n" * 300} for i in range(1200)])
    replica = PipelineDoc()
    replica.apply_remote(author.encode_update())
    sv = replica.state_vector()
    author.remove_story("5_s")
    author.add_stories([{"story_id": f"{i}_s", "stage": "2_current", "name": "m" * 300} for i in range(2000, 3500)])
    update = author.encode_update(sv)
    assert len(update) * 8 >= replica._bytes_applied and len(update) >= document.BULK_UPDATE_BYTES
    seen: list[Changes] = []
    replica.add_listener(seen.append)
    replica.apply_remote(update)
    assert len(seen) == 1 and "5_s" in seen[0].stories and "2000_s" in seen[0].stories
    assert replica.story("5_s") is None and replica.story("3499_s") is not None
    assert dict(replica.stories) == dict(author.stories)


def test_active_ids_follow_stage_moves_removals_and_quarantine() -> None:
    doc = PipelineDoc()
    doc.add_stories([{"story_id": "1_a", "stage": "2_current"}, {"story_id": "2_b", "stage": "5_done"},
                     {"story_id": "3_c", "stage": "1_backlog"}])
    assert set(doc.active_ids) == {"1_a"}
    doc.move("3_c", "4_merge")
    doc.move("1_a", "5_done")
    assert set(doc.active_ids) == {"3_c"}
    doc.put_raw("3_c", blocked="maybe")  # quarantined: not a story any more
    assert set(doc.active_ids) == set()
    doc.put_raw("3_c", blocked=False)
    doc.remove_story("2_b")
    assert set(doc.active_ids) == {"3_c"}


async def test_a_deferred_bulk_update_is_read_in_slices_and_the_loop_runs_between() -> None:
    import asyncio

    author = PipelineDoc()
    author.add_stories([{"story_id": f"{i}_s", "stage": "2_current", "name": "n" * 300} for i in range(1500)])
    replica = PipelineDoc()
    replica.defer_bulk = True
    seen: list[Changes] = []
    replica.add_listener(seen.append)
    replica.apply_remote(author.encode_update())
    assert replica.catching_up and seen == [] and len(replica.stories) == 0
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await replica.catch_up(slice_size=100)
    task.cancel()
    assert ticks >= 10 and not replica.catching_up
    assert dict(replica.stories) == dict(author.stories) and len(seen) == 1 and len(seen[0].stories) == 1500


async def test_a_cancelled_catch_up_still_reads_every_story() -> None:
    import asyncio

    author = PipelineDoc()
    author.add_stories([{"story_id": f"{i}_s", "stage": "5_done", "name": "n" * 300} for i in range(1500)])
    replica = PipelineDoc()
    replica.defer_bulk = True
    replica.apply_remote(author.encode_update())
    task = asyncio.create_task(replica.catch_up(slice_size=10))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not replica.catching_up and len(replica.stories) == 1500


def test_a_large_update_is_checked_apart_and_refused_alike() -> None:
    from tests.sync.hostile import nested_update

    from huskies_agent.sync import protocol

    session = protocol.SyncSession(PipelineDoc())
    deep = protocol.Message(protocol.Kind.UPDATE, nested_update(300))
    with pytest.raises(protocol.RefusedUpdate):
        session.check(deep)
    with pytest.raises(protocol.RefusedUpdate):
        session.handle(deep)
    author = PipelineDoc()
    author.add_story("1_s", stage="2_current")
    fine = protocol.Message(protocol.Kind.UPDATE, author.encode_update())
    session.check(fine)
    assert session.handle(fine, checked=True).applied
