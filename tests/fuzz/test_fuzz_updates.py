"""Fuzz the update decoder: nothing a peer sends may crash or escape as anything but a refusal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tests.fuzz.budget import fuzz
from tests.sync.hostile import nested_update, story_update

from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.updates import UpdateRefused, _quickly_within, inspect_update, update_problem

#: Real updates to mutate: stories with every field kind, a claim, a removal.
_SEEDS = [
    story_update("1_s", name="n", depends_on=["0_a"], retry_count=2, blocked=False,
                 claim={"node": "n", "epoch": 3, "at": 1.5}),
    story_update("2_s", name=[[["x"]]], agent={"k": [1, 2.5, None, True]}),
    nested_update(40),
]

#: Container tags (list, object) and their lengths: the bytes that build deep values.
_NESTING = st.binary(min_size=1, max_size=4).map(lambda b: b"\x75\x01" * (len(b) * 97))


@st.composite
def mutated_updates(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["truncate", "flip", "insert", "nest", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "truncate":
            del data[at:]
        elif action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=16))
        elif action == "nest":
            data[at:at] = draw(_NESTING)
        else:
            data += data[at:]
    return bytes(data)


def _apply_or_refuse(update: bytes) -> None:
    """The receiving side's path: refused with ProtocolError, or applied; the document stays readable."""
    doc = PipelineDoc()
    session = protocol.SyncSession(doc)
    try:
        session.handle(protocol.Message(protocol.Kind.UPDATE, update))
    except protocol.ProtocolError:
        pass
    assert len(doc.stories) + len(doc.malformed) <= 2
    doc.add_story("after", stage="2_current")            # the document still takes writes
    assert doc.story("after") is not None


@fuzz(1500)
@given(st.binary(max_size=512))
def test_random_bytes_are_refused_or_described(data: bytes) -> None:
    try:
        shape = inspect_update(data)
    except UpdateRefused as exc:
        assert str(exc)
    else:
        assert shape.max_depth <= 256
    problem = update_problem(data)
    assert problem is None or isinstance(problem, str)


@fuzz(600)
@given(mutated_updates())
def test_mutated_updates_never_crash_the_receiver(update: bytes) -> None:
    _apply_or_refuse(update)


@fuzz(10)
@given(st.sampled_from([257, 1200, 50_000, 1_000_000]))
def test_the_issues_nested_values_are_refused_before_the_library_sees_them(depth: int) -> None:
    # 50 000 and more crash the CRDT library outright when applied: the check must come first.
    update = nested_update(depth)
    assert update_problem(update) == "a value nested deeper than 256 levels"
    _apply_or_refuse(update)


def _careful_walk_accepts(data: bytes) -> bool:
    try:
        inspect_update(data)
    except UpdateRefused:
        return False
    return True


@fuzz(1500)
@given(st.one_of(mutated_updates(), st.binary(max_size=512)))
def test_the_quick_walk_accepts_nothing_the_careful_walk_refuses(data: bytes) -> None:
    if _quickly_within(data, 256):
        assert _careful_walk_accepts(data)


def test_the_quick_walk_accepts_real_documents_and_refuses_deep_values() -> None:
    doc = PipelineDoc()
    doc.add_stories([{"story_id": f"{i}_s", "stage": "2_current", "depends_on": ["0_s"], "name": "u" * i}
                     for i in range(300)])
    doc.claim("5_s", "n", 1.0)
    doc.remove_story("7_s")
    for update in (doc.encode_update(), *_SEEDS[:2]):
        assert _quickly_within(update, 256) and _careful_walk_accepts(update)
    assert not _quickly_within(nested_update(300), 256)
    assert update_problem(nested_update(300)) == "a value nested deeper than 256 levels"
