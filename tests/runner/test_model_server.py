"""The scripted Messages API itself (tests/helpers/model_server.py), spoken to over HTTP without the CLI."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from tests.helpers.model_server import Fail, ModelServer, Reply, text, tool_use

TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]


def _post(server: ModelServer, body: dict[str, Any], path: str = "/v1/messages?beta=true",
          ) -> tuple[int, dict[str, str], bytes]:
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json", "x-api-key": "k"})
        response = conn.getresponse()
        try:
            data = response.read()
        except http.client.IncompleteRead as exc:
            data = exc.partial
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def _events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[len(b"data: "):]) for line in data.splitlines() if line.startswith(b"data: ")]


def test_streaming_reply_with_a_tool_call_then_a_checked_tool_result() -> None:
    call = tool_use("Bash", {"command": "ls"}, tool_id="toolu_1")
    with ModelServer([Reply([text("Looking."), call]), Reply([text("Done.")], expect_tool_result="README")]) as server:
        status, headers, data = _post(server, {"stream": True, "tools": TOOLS, "messages": [
            {"role": "user", "content": "hi"}]})
        assert status == 200 and headers["content-type"] == "text/event-stream"
        events = _events(data)
        assert [e["type"] for e in events] == [
            "message_start", "content_block_start", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        assert events[4]["content_block"]["name"] == "Bash"
        assert json.loads(events[5]["delta"]["partial_json"]) == {"command": "ls"}
        assert events[7]["delta"]["stop_reason"] == "tool_use"
        # The tool result lacks the expected text: recorded as a problem, still answered.
        status, _, _ = _post(server, {"stream": False, "tools": TOOLS, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "nothing"}]}]},
            path="/v1/messages")
        assert status == 200
    assert len(server.problems) == 1 and "lacks 'README'" in server.problems[0]
    assert [r.path for r in server.requests] == ["/v1/messages?beta=true", "/v1/messages"]


def test_non_streaming_json_and_unscripted_requests() -> None:
    with ModelServer([Reply([text("hello")], input_tokens=7)]) as server:
        status, _, data = _post(server, {"stream": False, "tools": TOOLS, "messages": []}, path="/v1/messages")
        message = json.loads(data)
        assert status == 200 and message["content"] == [{"type": "text", "text": "hello"}]
        assert message["stop_reason"] == "end_turn" and message["usage"]["input_tokens"] == 7
        # A request without tools is not the agent loop: answered, script untouched.
        status, _, _ = _post(server, {"messages": []})
        assert status == 200
        status, _, _ = _post(server, {}, path="/v1/unknown")
        assert status == 404
        # After the script: an end_turn answer and a problem.
        status, _, _ = _post(server, {"tools": TOOLS, "messages": []})
        assert status == 200
    assert server.problems == ["request #2 came after the script was used up"]
    assert [r.step for r in server.requests] == ["0:reply", "aux", "", "over"]


@pytest.mark.parametrize(
    ("fail", "status", "error_type", "retry_after"),
    [
        (Fail(status=401), 401, "authentication_error", None),
        (Fail(status=403), 403, "permission_error", None),
        (Fail(status=429, retry_after="3"), 429, "rate_limit_error", "3"),
        (Fail(status=529), 529, "overloaded_error", None),
        (Fail(status=500), 500, "api_error", None),
    ],
)
def test_http_failures(fail: Fail, status: int, error_type: str, retry_after: str | None) -> None:
    with ModelServer([fail]) as server:
        got, headers, data = _post(server, {"tools": TOOLS, "messages": []})
    assert got == status
    assert json.loads(data) == {"type": "error", "error": {"type": error_type, "message": "scripted failure"}}
    assert headers.get("retry-after") == retry_after


def test_cut_streams_and_bodies_end_mid_event() -> None:
    with ModelServer([Fail(cut_after=2, times=2)]) as server:
        _, _, data = _post(server, {"stream": True, "tools": TOOLS, "messages": []})
        assert data.count(b"\n\n") == 2 and not data.endswith(b"\n\n")  # two whole events, half a third
        _, _, body = _post(server, {"stream": False, "tools": TOOLS, "messages": []})
        with pytest.raises(ValueError):
            json.loads(body)
    assert server.unused_steps == 0


def test_connectivity_check_is_answered() -> None:
    """Without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC the CLI first sends HEAD /api/hello (recorded)."""
    with ModelServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("HEAD", "/api/hello")
        assert conn.getresponse().status == 200
        conn.close()
    assert [(r.method, r.path) for r in server.requests] == [("HEAD", "/api/hello")]
