"""The document reader is total: any value in any field gives a story or a quarantined entry with a reason."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pycrdt import Map

from huskies_agent.commands.stories_cmd import render_list
from huskies_agent.commands.views import Output, StoryFilter
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import (
    MAX_SAFE_INT,
    MalformedEntry,
    ParseLimits,
    describe,
    parse_presence,
    read_story,
    value_problem,
)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def good(**fields: Any) -> dict[str, Any]:
    return {"story_id": "1_s", "stage": "2_current", **fields}


# (field values, words the reason must contain); every row must be quarantined.
QUARANTINED = [
    ({"name": nested(1200)}, "nested deeper"),
    ({"name": nested(17)}, "nested deeper"),
    ({"retry_count": 10**400}, "safe integer range"),
    ({"retry_count": MAX_SAFE_INT + 1}, "safe integer range"),
    ({"retry_count": float("nan")}, "non-finite"),
    ({"retry_count": float("inf")}, "non-finite"),
    ({"retry_count": "9" * 5000}, "whole number"),
    ({"retry_count": [1]}, "whole number"),
    ({"blocked": "maybe"}, "true or false"),
    ({"name": 3}, "expected a string"),
    ({"name": "x" * 70_000}, "70000 characters"),
    ({"agent": {1: "x"}}, "key of type int"),
    ({"agent": {"k" * 70_000: 1}}, "key of 70000"),
    ({"depends_on": {"a": 1}}, "list or a string"),
    ({"depends_on": ["1_s"]}, "depends on itself"),
    ({"depends_on": "0_a, 1_s"}, "depends on itself"),
    ({"stage": "9_nowhere"}, "unknown stage"),
    ({"stage": "s" * 10_000}, "unknown stage"),
    ({"story_id": "2_other"}, "names itself"),
    ({"claim": [1, 2]}, "claim"),
    ({"claim": {"node": "n", "epoch": 2**60, "at": 0}}, "safe"),
    ({"extra": object()}, "type object"),
    ({"extra": [0] * 200_000}, "bytes of values"),
]


@pytest.mark.parametrize(("fields", "words"), QUARANTINED)
def test_hostile_values_are_quarantined_with_a_reason(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(MalformedEntry) as err:
        read_story("1_s", good(**fields))
    assert words in str(err.value)
    assert len(str(err.value)) < 400  # a reason, never a copy of the hostile value


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("../../x", "may hold only"),
        ("", "empty"),
        ("-leading-dash", "may hold only"),
        ("a\nb", "may hold only"),
        ("a" * 300, "300 characters"),
        ("a..b", "'..'"),
        ("x.lock", "'.lock'"),
    ],
)
def test_invalid_story_ids_are_quarantined_with_a_reason(key: str, words: str) -> None:
    with pytest.raises(MalformedEntry) as err:
        read_story(key, {"story_id": key, "stage": "2_current"})
    assert words in str(err.value) and "quarantined" in str(err.value)


def test_valid_stories_pass_unchanged() -> None:
    story = read_story("1_s", good(name="N", retry_count=2.0, depends_on="0_a 0_b", blocked=1))
    assert (story.name, story.retry_count, story.depends_on, story.blocked) == ("N", 2, ("0_a", "0_b"), True)


@pytest.mark.parametrize(
    ("value", "limits", "problem"),
    [
        (nested(16), ParseLimits(), None),
        (nested(17), ParseLimits(), "nested deeper than 16"),
        (nested(100_000), ParseLimits(), "nested deeper than 16"),  # no recursion in the check
        ({"a": "x" * 300}, ParseLimits(max_string_length=299), "300 characters"),
        ({"a": [1.5, None, True, "s"]}, ParseLimits(), None),
        ([float("-inf")], ParseLimits(), "non-finite"),
        ([b"bytes"], ParseLimits(), "type bytes"),
    ],
)
def test_value_problem(value: object, limits: ParseLimits, problem: str | None) -> None:
    found = value_problem(value, limits)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (nested(100_000), "a list of 1"),
        ("x" * 10_000, "(10000 characters)"),
        (10**500, "an integer of 1661 bits"),
        ({"a": 1}, "an object of 1 keys"),
        (float("nan"), "nan"),
    ],
)
def test_describe_never_recurses_or_copies(value: object, text: str) -> None:
    assert text in describe(value) and len(describe(value)) < 100


def test_limits_below_the_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        ParseLimits(max_depth=1)


def _plant(doc: PipelineDoc, story_id: str, **fields: Any) -> None:
    with doc.doc.transaction():
        doc._items[story_id] = Map({"story_id": story_id, "stage": "2_current", **fields})


def test_document_quarantines_the_nested_value_and_keeps_the_others(caplog: pytest.LogCaptureFixture) -> None:
    doc = PipelineDoc()
    doc.add_story("1_ok", stage="2_current")
    with caplog.at_level(logging.WARNING):
        _plant(doc, "2_deep", name=nested(1200))   # json.loads raises RecursionError on this
        _plant(doc, "3_huge", retry_count=1e300)
        _plant(doc, "5_nan", retry_count=float("nan"))    # the CRDT's JSON form turns NaN into null
        _plant(doc, "../../x")
        _plant(doc, "4_self", depends_on=["4_self"])
        doc.put_raw("1_ok", name="still fine")     # another change: the bad ones are not logged again
    assert set(doc.stories) == {"1_ok", "5_nan"} and doc.story("1_ok").name == "still fine"  # type: ignore[union-attr]
    assert doc.story("5_nan").retry_count == 0  # type: ignore[union-attr]
    assert set(doc.malformed) == {"2_deep", "3_huge", "../../x", "4_self"}
    assert "nested too deep" in doc.malformed["2_deep"]
    assert "safe range" in doc.malformed["3_huge"]
    assert "may hold only" in doc.malformed["../../x"]
    assert "depends on itself" in doc.malformed["4_self"]
    lines = [r.getMessage() for r in caplog.records if "quarantined story" in r.getMessage()]
    assert len(lines) == 4, lines  # each logged once, with its reason
    # A peer replaying the whole document (the bulk path) reaches the same verdicts.
    replica = PipelineDoc()
    replica.add_stories({"story_id": f"{n}_bulk", "stage": "1_backlog"} for n in range(100))
    replica.apply_remote(doc.encode_update())
    assert set(replica.malformed) == set(doc.malformed)
    assert set(replica.stories) == {"1_ok", "5_nan"} | {f"{n}_bulk" for n in range(100)}
    # Fixing a quarantined entry releases it.
    doc.put_raw("3_huge", retry_count=0)
    assert "3_huge" in doc.stories and "3_huge" not in doc.malformed


def test_entries_larger_than_the_limit_are_not_decoded() -> None:
    doc = PipelineDoc(limits=ParseLimits(max_entry_bytes=4096))
    _plant(doc, "1_big", name="x" * 5000)
    assert "5" in doc.malformed["1_big"] and "at most 4096" in doc.malformed["1_big"]


def test_stories_list_marks_quarantined_entries() -> None:
    doc = PipelineDoc()
    doc.add_story("1_ok", stage="2_current")
    _plant(doc, "2_deep", name=nested(1200))
    _plant(doc, "bad\nid")
    table = render_list(doc, StoryFilter(), Output.TABLE, 0.0)
    assert "QUARANTINED  '2_deep': story '2_deep' is quarantined" in table
    assert "QUARANTINED  'bad\\nid'" in table  # the newline cannot forge a table line
    assert table.endswith("1 story, 2 quarantined (never worked on; see the reasons above)")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"node_id": "n", "extra": nested(50)}, "nested deeper"),
        ({"node_id": "other"}, "names itself"),
        ({"node_id": "n", "last_seen": float("inf")}, "non-finite"),
        ({"node_id": "n", "capacity": 2**70}, "safe integer"),
        ([1, 2], "not an object"),
    ],
)
def test_hostile_presence_entries_are_quarantined(raw: object, words: str) -> None:
    with pytest.raises(MalformedEntry, match=words):
        parse_presence("n", raw)


def test_document_quarantines_presence_and_keeps_the_others() -> None:
    doc = PipelineDoc()
    doc._nodes["good"] = {"node_id": "good", "last_seen": 1.0}
    doc._nodes["bad"] = {"node_id": "bad", "x": nested(40)}
    assert set(doc.nodes) == {"good"} and "nested deeper" in doc.malformed_nodes["bad"]
