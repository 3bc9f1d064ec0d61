"""Fuzz the server's message handling: garbage, truncated, oversized and nested frames on a live socket.

Whatever one connection sends, the server keeps serving the others and the document
stays whole. Each example runs a real in-process rendezvous and real clients.
"""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import given
from hypothesis import strategies as st
from tests.fuzz.budget import fuzz
from tests.helpers.rendezvous import synced_client, wait_until
from tests.sync.hostile import nested_update, story_update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from huskies_agent.pipeline import stages
from huskies_agent.sync import protocol
from huskies_agent.sync.limits import ServerLimits
from huskies_agent.sync.server import RendezvousServer

_VALID = [story_update("1_s", name="x"), story_update("2_s", depends_on=["1_s"])]

FRAMES = st.one_of(
    st.binary(max_size=64),                                                    # garbage
    st.sampled_from(_VALID).map(protocol.encode_update),                      # valid
    st.tuples(st.sampled_from(_VALID), st.integers(1, 60)).map(              # truncated
        lambda t: protocol.encode_update(t[0])[: t[1]]),
    st.integers(257, 200_000).map(lambda d: protocol.encode_update(nested_update(d))),  # nested
    st.just(protocol.encode_update(story_update("3_big", name="x" * 40_000))),         # oversized
    st.binary(max_size=32).map(protocol.encode_step1),                       # odd state vectors
    st.just(protocol.encode_step1(b"\x00")),                                 # "everything, please"
    st.binary(max_size=32).map(lambda b: bytes((1,)) + protocol.encode_var_bytes(b)),   # awareness
    st.text(max_size=20),                                                    # text frames
)


async def _scenario(frames: list[bytes | str]) -> None:
    limits = ServerLimits(max_document_bytes=100_000, max_update_bytes=30_000, max_outbox_bytes=64_000)
    async with RendezvousServer(None, port=0, limits=limits, ping_interval=None) as server:
        async with synced_client(server.url) as (bystander_doc, bystander):
            with contextlib.suppress(ConnectionClosed, OSError):
                async with connect(server.url, max_size=None, close_timeout=1) as hostile:
                    for frame in frames:
                        await hostile.send(frame)
                    await asyncio.sleep(0.05)
            # The bystander still writes and a newcomer still syncs everything.
            bystander_doc.add_story("after", stage=stages.CURRENT)
            assert await bystander.confirm(10)
            async with synced_client(server.url) as (newcomer, _):
                await wait_until(lambda: newcomer.story("after") is not None, what="the bystander's write")
                assert "3_big" not in newcomer.stories  # over the update limit: never applied
            assert bystander.connected


@fuzz(60)
@given(st.lists(FRAMES, min_size=1, max_size=6))
def test_any_frames_leave_the_server_serving(frames: list[bytes | str]) -> None:
    asyncio.run(_scenario(frames))
