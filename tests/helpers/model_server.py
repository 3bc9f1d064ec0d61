"""A scripted Anthropic Messages API on loopback, for running the real Claude Code CLI in tests.

The server plays a per-test script: each ``POST /v1/messages`` (with or without
``?beta=true``) from the agent's main loop takes the next step of the script. A step is
a :class:`Reply` (text and ``tool_use`` blocks, streamed as server-sent events or sent
as one JSON body, whichever the request asked for) or a :class:`Fail` (an HTTP error,
a stream cut in the middle of an event, or a slow first token before a reply)::

    script = [
        Reply([text("Writing it."), tool_use("Write", {"file_path": "w.txt", "content": "x\\n"})]),
        Reply([text("Done.")], expect_tool_result="w.txt"),
    ]
    with ModelServer(script) as server:
        env = {"ANTHROPIC_BASE_URL": server.url, ...}
        ...                                    # run the CLI
    assert server.problems == []               # every expectation held, the script was used up
    server.main_requests[0]["body"]            # what the CLI sent, decoded

Claude Code 2.1.332 with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` sends nothing but
``POST /v1/messages?beta=true``; without it, it first sends ``HEAD /api/hello`` (answered 200).
Every request is recorded (:attr:`ModelServer.requests`), also the ones that are not
part of the script. Requests that are not the agent's main loop (no ``tools`` in the
body, e.g. a one-token quota probe or a title summary) get a short canned reply and do
not consume the script. A request after the script is used up is answered with an
``end_turn`` text and recorded as a problem, so a test fails with a clear message
instead of hanging.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

HOST = "127.0.0.1"
MODEL = "claude-sonnet-4-5-20250929"

Block = dict[str, Any]


def text(value: str) -> Block:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: Mapping[str, Any], tool_id: str = "") -> Block:
    return {"type": "tool_use", "id": tool_id or f"toolu_{uuid.uuid4().hex[:20]}", "name": name,
            "input": dict(tool_input)}


@dataclass
class Reply:
    """One assistant message. ``stop_reason`` defaults to tool_use when it has a tool call."""

    blocks: Sequence[Block]
    input_tokens: int = 100
    output_tokens: int = 20
    stop_reason: str = ""
    #: Seconds to wait before the first byte of the response (a slow first token).
    delay: float = 0.0
    #: A text the ``tool_result`` blocks of this request must contain (checked, not enforced).
    expect_tool_result: str = ""
    #: Whether that tool_result must be an error (``is_error``); None: not checked.
    expect_tool_error: bool | None = None
    #: More checks on the decoded request body; return a problem text or "".
    check: Callable[[Mapping[str, Any]], str] | None = None

    def reason(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn"


@dataclass
class Fail:
    """Answer one request with a failure instead of a reply.

    ``status`` > 0: an HTTP error with an Anthropic error body (``error_type``) and, when
    given, a ``retry-after`` header. ``cut_after`` >= 0 (with status 0): a 200 stream that
    sends that many complete events of ``reply`` and half of the next one, then closes
    the connection.
    """

    status: int = 0
    error_type: str = ""
    message: str = "scripted failure"
    retry_after: str = ""
    cut_after: int = -1
    reply: Reply | None = None
    #: Apply to this many consecutive requests (one step of the script each).
    times: int = 1


Step = Reply | Fail

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    #: The script step that answered it ("" for an unscripted request).
    step: str = ""
    #: Wall-clock arrival (time.time()), to line it up with other processes' logs.
    wall: float = 0.0


def request_text(body: Mapping[str, Any]) -> str:
    """Every text the request carries: system prompt, messages, tool results (for asserts)."""
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key in ("text", "content", "system", "messages"):
                if key in value:
                    walk(value[key])

    walk({"system": body.get("system", ""), "messages": body.get("messages", [])})
    return "\n".join(parts)


def tool_results(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last user message of a request.

    Messages after it are skipped: with ``--max-budget-usd`` the CLI ends each request with a
    ``system`` message of its own ("USD budget: $x/$y; $z remaining").
    """
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") != "system"]
    if not messages or messages[-1].get("role") != "user":
        return []
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def _result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return ""


def _message(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
        "content": [dict(b) for b in reply.blocks], "stop_reason": reply.reason(), "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def sse_events(reply: Reply, model: str) -> list[bytes]:
    """The server-sent events of ``reply`` as the Messages API streams them."""
    message = _message(reply, model)
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(reply.blocks):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "text_delta", "text": block["text"]}}))
        elif block["type"] == "tool_use":
            events.append(("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            events.append(("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
        else:
            raise ValueError(f"unsupported block type {block['type']!r}")
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": reply.reason(), "stop_sequence": None},
                                     "usage": {"output_tokens": reply.output_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._record({})
        self._json(404, _error_body(404, "not_found_error", f"no route {self.path}"))

    def do_HEAD(self) -> None:
        self._record({})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        if not isinstance(body, dict):
            body = {"_unparsed": body}
        path = self.path.partition("?")[0]
        if path == "/v1/messages/count_tokens":
            self._record(body, "count_tokens")
            self._json(200, {"input_tokens": 100})
            return
        if path != "/v1/messages":
            self._record(body)
            self._json(404, _error_body(404, "not_found_error", f"no route {self.path}"))
            return
        if not body.get("tools"):
            # Not the agent loop (a quota probe, a summary): a short reply that uses no script step.
            self._record(body, "aux")
            self._answer(body, Reply([text("ok")], input_tokens=1, output_tokens=1))
            return
        step, label = self.server.next_step()
        record = self._record(body, label)
        if step is None:
            self.server.problem(f"request #{len(self.server.main_requests)} came after the script was used up")
            self._answer(body, Reply([text("The scripted conversation is over.")]))
            return
        if isinstance(step, Reply):
            self.server.check(step, record)
            self._answer(body, step)
        else:
            self._fail(body, step)

    # ------------------------------------------------------------------ answers
    def _record(self, body: dict[str, Any], step: str = "") -> Recorded:
        record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                          body, time.monotonic(), step, time.time())
        with self.server.lock:
            self.server.requests.append(record)
        return record

    def _json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, body: Mapping[str, Any], reply: Reply) -> None:
        if reply.delay and self.server.closing.wait(reply.delay):
            self.close_connection = True  # the server is shutting down: drop a held-back answer
            return
        model = str(body.get("model") or MODEL)
        try:
            if not body.get("stream"):
                self._json(200, _message(reply, model))
                return
            self._stream(sse_events(reply, model))
        except OSError:
            self.close_connection = True  # the client went away while the reply was held back

    def _stream(self, events: Sequence[bytes], cut: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                self.wfile.write(event)
                self.wfile.flush()
            if cut:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fail(self, body: Mapping[str, Any], fail: Fail) -> None:
        if fail.status:
            headers = {"retry-after": fail.retry_after} if fail.retry_after else {}
            if fail.status in (429, 529, 500):
                headers["x-should-retry"] = "true"
            error_type = fail.error_type or ERROR_TYPES.get(fail.status, "api_error")
            self._json(fail.status, _error_body(fail.status, error_type, fail.message), headers)
            return
        reply = fail.reply or Reply([text("this reply is cut short " * 4)])
        if not body.get("stream"):
            self._cut_json(json.dumps(_message(reply, str(body.get("model") or MODEL))).encode())
            return
        events = sse_events(reply, str(body.get("model") or MODEL))
        kept = list(events[: max(fail.cut_after, 0)])
        nxt = events[len(kept)] if len(kept) < len(events) else b"event: ping\ndata: {}\n\n"
        kept.append(nxt[: len(nxt) // 2])
        self._stream(kept, cut=True)


    def _cut_json(self, data: bytes) -> None:
        """Promise the whole body, send half of it, close the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _error_body(status: int, error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class ModelServer(ThreadingHTTPServer):
    """The scripted Messages API; use as a context manager (it serves on a thread)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Sequence[Step] = ()) -> None:
        super().__init__((HOST, 0), _Handler)
        self.lock = threading.Lock()
        #: Set when the server stops: wakes replies held back by ``delay``.
        self.closing = threading.Event()
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self._steps: list[tuple[Step, str]] = []
        self._used = 0
        self.load(script)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="model-server", daemon=True)

    def load(self, script: Sequence[Step]) -> None:
        """Play ``script`` from now on, as a fresh server would: what was left of the previous
        script, the recorded requests and problems are dropped. For a server that outlives one
        run, e.g. one whose address was configured into an install."""
        steps: list[tuple[Step, str]] = []
        for number, step in enumerate(script):
            repeat = step.times if isinstance(step, Fail) else 1
            label = f"{number}:{type(step).__name__.lower()}"
            steps += [(step, label)] * repeat
        with self.lock:
            self._steps = steps
            self._used = 0
            self.requests = []
            self.problems = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    @property
    def main_requests(self) -> list[Recorded]:
        """The scripted (agent loop) requests, in order."""
        with self.lock:
            return [r for r in self.requests if r.step and r.step not in ("aux", "count_tokens")]

    @property
    def unused_steps(self) -> int:
        with self.lock:
            return len(self._steps) - self._used

    def next_step(self) -> tuple[Step | None, str]:
        with self.lock:
            if self._used >= len(self._steps):
                return None, "over"
            step, label = self._steps[self._used]
            self._used += 1
            return step, label

    def problem(self, text_: str) -> None:
        with self.lock:
            self.problems.append(text_)

    def check(self, reply: Reply, record: Recorded) -> None:
        if reply.expect_tool_result or reply.expect_tool_error is not None:
            results = tool_results(record.body)
            if not results:
                self.problem(f"step {record.step}: expected a tool_result, the request had none")
            for block in results:
                content = _result_text(block)
                if reply.expect_tool_result and reply.expect_tool_result not in content:
                    self.problem(f"step {record.step}: tool_result lacks {reply.expect_tool_result!r}: "
                                 f"{content[:300]!r}")
                if reply.expect_tool_error is not None and bool(block.get("is_error")) != reply.expect_tool_error:
                    self.problem(f"step {record.step}: tool_result is_error={block.get('is_error')!r}, "
                                 f"expected {reply.expect_tool_error}: {content[:300]!r}")
        if reply.check is not None:
            found = reply.check(record.body)
            if found:
                self.problem(f"step {record.step}: {found}")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)
