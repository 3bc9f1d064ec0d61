"""Typed API errors and the retries of the API edge, against a real local HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from huskies_agent.k8s.api import Kube, RetryPolicy, connect
from huskies_agent.k8s.credentials import Credentials, Source
from huskies_agent.k8s.errors import (
    ApiError,
    ApiException,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    error_for,
    is_conflict,
    is_not_found,
    parse_retry_after,
    should_retry,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone), (422, Invalid),
     (429, TooManyRequests), (500, ServerError), (503, ServerError), (504, ServerError), (400, ApiError),
     (418, ApiError)],
)
def test_one_type_per_status(status: int, kind: type[ApiError]) -> None:
    assert type(error_for(status, "r")) is kind
    assert type(ApiError(status, "r")) is kind  # the base type picks the same subclass
    assert type(ApiException(status, "r")) is kind  # and so does the old name
    assert isinstance(error_for(status, "r"), ApiException)


def test_compatible_helpers_and_message() -> None:
    assert is_conflict(ApiException(409, "Conflict")) and not is_conflict(ApiException(404, "x"))
    assert is_not_found(ApiException(404, "NotFound")) and not is_not_found(ValueError())
    err = error_for(422, "Unprocessable", '{"message": "spec.x: Invalid value"}', "POST", "/p")
    assert err.message == "spec.x: Invalid value" and str(err) == "POST /p: 422 Unprocessable"
    assert error_for(500, "Internal", "not json").message == "Internal"


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("3", 3.0), (" 1 ", 1.0), ("-1", None),
                                                ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("method", "status", "retry_after", "retried"),
    [
        ("GET", None, None, True),  # connection error: reads only
        ("POST", None, None, False),
        ("PUT", None, None, False),
        ("DELETE", None, None, False),
        ("GET", 500, None, True),
        ("GET", 503, None, True),
        ("PATCH", 500, None, False),
        ("PUT", 503, None, False),
        ("PUT", 503, "2", True),  # the server says it did not process it
        ("POST", 429, None, True),
        ("PUT", 429, "1", True),
        ("GET", 404, None, False),
        ("PUT", 409, None, False),
        ("GET", 403, None, False),
    ],
)
def test_which_calls_are_retried(method: str, status: int | None, retry_after: str | None, retried: bool) -> None:
    error = None if status is None else error_for(status, "r", retry_after=retry_after)
    assert should_retry(method, error) is retried


# ---------------------------------------------------------------------------- the retry loop


@dataclass
class Script:
    """Answers the test server gives, in order; then 200 with an empty ConfigMap."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handle(request: web.Request) -> web.Response:
        script.seen.append(request.method)
        if script.answers:
            status, headers = script.answers.pop(0)
            return web.json_response({"kind": "Status", "message": f"scripted {status}"}, status=status,
                                     headers=headers)
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "cm"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", script
    finally:
        await runner.cleanup()


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def make_kube(url: str, sleeps: Sleeps, policy: RetryPolicy | None = None) -> Kube:
    creds = Credentials(source=Source.EXPLICIT, origin="test", server=url, token="t")
    return Kube(await connect(credentials=creds), "ns", retry=policy, sleep=sleeps)


async def test_reads_ride_out_server_errors(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {}), (500, {})]
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps)
    try:
        assert await kube.get_configmap("cm") == {"kind": "ConfigMap", "metadata": {"name": "cm"}}
    finally:
        await kube.close()
    assert script.seen == ["GET"] * 3
    assert len(sleeps.delays) == 2 and all(0.2 <= d <= 5.0 for d in sleeps.delays)


async def test_throttled_writes_wait_what_retry_after_asks(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "7"}), (429, {"Retry-After": "3600"})]
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps, RetryPolicy(max_retry_after=30))
    try:
        await kube.create_configmap({"metadata": {"name": "cm"}})
    finally:
        await kube.close()
    assert script.seen == ["POST"] * 3
    assert sleeps.delays[0] >= 7 and sleeps.delays[1] == 30  # a day-long Retry-After is capped


async def test_writes_are_not_repeated_on_server_errors(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(500, {})]
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps)
    try:
        with pytest.raises(ServerError) as err:
            await kube.create_configmap({"metadata": {"name": "cm"}})
    finally:
        await kube.close()
    assert err.value.status == 500 and err.value.message == "scripted 500"
    assert script.seen == ["POST"] and sleeps.delays == []


async def test_conflicts_and_not_found_are_answers_not_failures(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(409, {}), (404, {})]
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps)
    try:
        with pytest.raises(Conflict):
            await kube.replace_lease("l", {"metadata": {"resourceVersion": "1"}})
        assert await kube.get_lease("l") is None
    finally:
        await kube.close()
    assert script.seen == ["PUT", "GET"] and sleeps.delays == []


async def test_retries_are_bounded(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {})] * 10
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps, RetryPolicy(attempts=3))
    try:
        with pytest.raises(ServerError):
            await kube.list_jobs("")
    finally:
        await kube.close()
    assert script.seen == ["GET"] * 3 and len(sleeps.delays) == 2


@pytest.fixture
async def hangup_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts connections and closes them without an answer."""
    connections: list[int] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.read(1024)
        writer.close()

    srv = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        srv.close()
        await srv.wait_closed()


async def test_lost_connections_are_retried_for_reads_only(hangup_server: tuple[str, list[int]]) -> None:
    url, connections = hangup_server
    sleeps = Sleeps()
    kube = await make_kube(url, sleeps, RetryPolicy(attempts=3))
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await kube.list_pods("")
        # three tries of ours (aiohttp itself repeats an idempotent request once on a fresh hang-up)
        assert len(sleeps.delays) == 2 and len(connections) >= 3
        before = len(connections)
        with pytest.raises(aiohttp.ClientConnectionError):
            await kube.create_job({"metadata": {"name": "j"}})
        assert len(connections) == before + 1 and len(sleeps.delays) == 2
    finally:
        await kube.close()
