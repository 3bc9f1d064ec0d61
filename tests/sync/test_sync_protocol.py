"""The sans-I/O protocol core: bytes in, bytes out, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, create_sync_message, create_update_message, handle_sync_message

from huskies_agent.backoff import reconnect_delay
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.auth import bearer_header, token_problem
from huskies_agent.sync.protocol import Kind, Message, ProtocolError, SyncSession


# ---------------------------------------------------------------------- varints
@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (2**32, b"\x80\x80\x80\x80\x10")],
)
def test_var_uint_round_trip(value: int, encoded: bytes) -> None:
    assert protocol.encode_var_uint(value) == encoded
    assert protocol.decode_var_uint(encoded + b"rest") == (value, len(encoded))


def test_var_uint_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        protocol.encode_var_uint(-1)
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.decode_var_uint(b"\x80\x80")
    with pytest.raises(ProtocolError, match="longer than"):
        protocol.decode_var_uint(b"\xff" * 11 + b"\x01")


# ---------------------------------------------------------------------- messages
def test_encodings_match_the_wire_format() -> None:
    assert protocol.encode_step1(b"\x01\x02") == b"\x00\x00\x02\x01\x02"
    assert protocol.encode_step2(b"\x00\x00") == b"\x00\x01\x02\x00\x00"
    assert protocol.encode_update(b"xyz") == b"\x00\x02\x03xyz"
    assert protocol.encode(Message(Kind.AWARENESS, b"\x00")) == b"\x01\x01\x00"
    assert protocol.encode(Message(Kind.QUERY_AWARENESS)) == b"\x03"
    assert protocol.encode(Message(Kind.AUTH, b"denied", 0)) == b"\x02\x00\x06denied"
    big = bytes(200)
    assert protocol.encode_update(big) == b"\x00\x02\xc8\x01" + big


def test_encodings_match_pycrdt() -> None:
    doc: Any = Doc()
    doc.get("m", type=Map)["k"] = "v"
    assert protocol.encode_step1(doc.get_state()) == create_sync_message(doc)
    update = doc.get_update()
    assert protocol.encode_update(update) == create_update_message(update)


@pytest.mark.parametrize(
    "message",
    [Message(Kind.STEP1, b"\x00"), Message(Kind.STEP2, b"\x00\x00"), Message(Kind.UPDATE, bytes(300)),
     Message(Kind.AWARENESS, b"\x01\x02"), Message(Kind.QUERY_AWARENESS), Message(Kind.AUTH, b"no", 0)],
)
def test_decode_round_trip(message: Message) -> None:
    assert protocol.decode(protocol.encode(message)) == message


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "empty frame"),
        ("\x00\x00\x00", "text frame"),
        (b"\x07\x00", "unknown message type 7"),
        (b"\x00\x05\x00", "unknown sync message type 5"),
        (b"\x00\x02\x05ab", "runs past the end"),
        (b"\x00\x02", "truncated"),
        (b"\x00\x02\x01a\x00", "1 unexpected bytes after a update message"),
        (b"\x03\x00", "unexpected bytes after a query-awareness"),
        (b"\xff\xfegarbage", "unknown message type"),
    ],
)
def test_decode_refuses_garbage(frame: bytes | str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        protocol.decode(frame)


# ---------------------------------------------------------------------- sessions
def _doc_with(*story_ids: str) -> PipelineDoc:
    doc = PipelineDoc()
    for story_id in story_ids:
        doc.add_story(story_id, stage="2_current")
    return doc


def test_initial_sync_both_ways() -> None:
    a_doc, b_doc = _doc_with("a1"), _doc_with("b1")
    a, b = SyncSession(a_doc), SyncSession(b_doc)
    ticket_a, step1_a = a.step1()
    ticket_b, step1_b = b.step1()
    assert (ticket_a, ticket_b) == (1, 1)

    at_b = b.receive(step1_a)
    assert at_b.message.kind is Kind.STEP1 and at_b.reply is not None and b.answered_peer
    at_a = a.receive(step1_b)
    assert at_a.reply is not None and a.answered_peer and not a.synced

    done_a = a.receive(at_b.reply)
    assert done_a.applied and done_a.synced_now and done_a.answered == 1 and a.synced
    done_b = b.receive(at_a.reply)
    assert done_b.synced_now and b.synced
    assert set(a_doc.stories) == set(b_doc.stories) == {"a1", "b1"}
    # A later STEP2 does not complete the initial sync again.
    _, again = a.step1()
    assert not a.receive(b.receive(again).reply or b"").synced_now


def test_confirmation_tickets_are_answered_in_order() -> None:
    client_doc, server_doc = PipelineDoc(), PipelineDoc()
    updates: list[bytes] = []
    client_doc.observe_updates(lambda update, remote: updates.append(update))
    client, server = SyncSession(client_doc), SyncSession(server_doc)

    wire: list[bytes] = [client.step1()[1]]
    client_doc.add_story("s1", stage="2_current")
    wire.append(client.update(updates.pop()))
    ticket, step1 = client.step1()
    wire.append(step1)
    assert (ticket, client.outstanding) == (2, 2)

    # The server handles frames in order: by the time it answers the second STEP1
    # it holds the update sent before it.
    replies = []
    for frame in wire:
        result = server.receive(frame)
        if result.reply is not None:
            replies.append(result.reply)
            assert len(replies) == 1 or server_doc.story("s1") is not None
    assert [client.receive(reply).answered for reply in replies] == [1, 2]
    assert client.outstanding == 0


def test_unsolicited_step2_is_applied_without_a_ticket() -> None:
    source = _doc_with("s1")
    session = SyncSession(PipelineDoc())
    result = session.receive(protocol.encode_step2(source.encode_update()))
    assert result.applied and result.answered is None and session.synced


def test_empty_update_is_not_applied() -> None:
    result = SyncSession(PipelineDoc()).receive(protocol.encode_update(protocol.EMPTY_UPDATE))
    assert result.message.kind is Kind.UPDATE and not result.applied


def test_invalid_payloads_are_protocol_errors() -> None:
    session = SyncSession(PipelineDoc())
    with pytest.raises(ProtocolError, match="invalid state vector"):
        session.receive(protocol.encode_step1(b"garbage"))
    with pytest.raises(ProtocolError, match="invalid update"):
        session.receive(protocol.encode_update(b"\x01"))


def test_awareness_and_query_are_ignored() -> None:
    session = SyncSession(PipelineDoc())
    for frame in (b"\x01\x01\x00", b"\x03"):
        result = session.receive(frame)
        assert result.reply is None and not result.applied


def test_interoperates_with_pycrdt_helpers() -> None:
    ours = _doc_with("ours")
    theirs: Any = Doc()
    session = SyncSession(ours)
    # pycrdt's STEP1 gets our STEP2, which pycrdt applies.
    reply = session.receive(create_sync_message(theirs)).reply
    assert reply is not None
    assert handle_sync_message(reply[1:], theirs) is None
    assert PipelineDoc(theirs).story("ours") is not None
    # Our STEP1 gets pycrdt's STEP2.
    _, step1 = session.step1()
    answer = handle_sync_message(step1[1:], theirs)
    assert answer is not None and session.receive(answer).answered == 1


# ---------------------------------------------------------------------- backoff and auth
def test_reconnect_delay_doubles_within_bounds() -> None:
    low, high = (lambda: 0.0), (lambda: 1.0)
    assert reconnect_delay(1, 1.0, 30.0, low) == reconnect_delay(1, 1.0, 30.0, high) == 1.0
    assert (reconnect_delay(2, 1.0, 30.0, low), reconnect_delay(2, 1.0, 30.0, high)) == (1.0, 2.0)
    assert (reconnect_delay(4, 1.0, 30.0, low), reconnect_delay(4, 1.0, 30.0, high)) == (4.0, 8.0)
    assert (reconnect_delay(50, 1.0, 30.0, low), reconnect_delay(500, 1.0, 30.0, high)) == (15.0, 30.0)
    assert all(1.0 <= reconnect_delay(n, 1.0, 30.0) <= 30.0 for n in range(0, 100))
    with pytest.raises(ValueError):
        reconnect_delay(1, 0.0, 1.0)
    with pytest.raises(ValueError):
        reconnect_delay(1, 2.0, 1.0)


def test_bearer_tokens() -> None:
    assert bearer_header("") == {}
    assert bearer_header("t0k") == {"Authorization": "Bearer t0k"}
    assert token_problem("Bearer t0k", "t0k") is None
    assert token_problem("bearer  t0k ", "t0k") is None
    assert token_problem(None, "t0k") == "missing bearer token"
    assert token_problem("Basic abc", "t0k") == "authorization header is not a bearer token"
    assert token_problem("Bearer nope", "t0k") == "wrong bearer token"
