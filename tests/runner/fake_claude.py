#!/usr/bin/env python3
"""A scripted stand-in for the Claude Code CLI, for the story runner's tests.

The runner's agent tests run the real CLI (tests/runner/test_real_cli_*.py). This stand-in
remains only for what the real CLI cannot be made to do on cue: exit with a chosen status
and no result event (a crash), report ``is_error`` with exit status 0, print or dump its
environment (the secret-leak tests: the real CLI would print only what a scripted Bash
command echoes, and the tests check the runner's redaction of every line, stderr included).
The real CLI also cannot run when tests need no agent at all (input validation).

It accepts the flags the runner passes (``-p``, ``--output-format stream-json``,
``--verbose``, ``--model``, ``--max-turns``, ``--max-budget-usd``,
``--permission-mode`` or ``--dangerously-skip-permissions``), reads the prompt from the
positional argument or stdin, acts on its cwd as the env script says, and prints
stream-json events ending with a ``result`` event.

Env script:
  FAKE_CLAUDE_MODE      edit (default) | noop | crash | error | hang | slow
  FAKE_CLAUDE_EDIT      1/0: write FAKE_CLAUDE_FILE before acting (default: 1 for edit/slow)
  FAKE_CLAUDE_FILE      file to append to, relative to cwd (default fake_claude_output.txt)
  FAKE_CLAUDE_CONTENT   text appended (default "edited by fake claude")
  FAKE_CLAUDE_FETCH_URL an http URL (e.g. a sidecar's) whose body is appended too, as a test
                        against a sidecar would use it; retried for 20 s while it refuses
  FAKE_CLAUDE_SLEEP     seconds to sleep in slow mode (default 1)
  FAKE_CLAUDE_EXIT      exit status for crash/error modes (default 3 / 1)
  FAKE_CLAUDE_TURNS, FAKE_CLAUDE_COST   values of the result event (3, 0.0123)
  FAKE_CLAUDE_RESULT    the result text (final message)
  FAKE_CLAUDE_PRINT_ENV comma-separated env var names whose values it prints (leak test)
  FAKE_CLAUDE_ENV_DUMP  path: write the environment it received as JSON
  FAKE_CLAUDE_CHILD_PIDFILE  path: in hang mode, start a sleeping child and write its pid
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

SESSION = str(uuid.uuid4())


def emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claude")
    parser.add_argument("prompt", nargs="?")
    parser.add_argument("-p", "--print", dest="print_mode", action="store_true")
    parser.add_argument("--output-format", choices=("text", "json", "stream-json"), default="text")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--model")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--max-budget-usd", type=float)
    parser.add_argument("--permission-mode",
                        choices=("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan"))
    parser.add_argument("--dangerously-skip-permissions", action="store_true")
    args = parser.parse_args(argv)
    if not args.print_mode:
        parser.error("this fake only runs in print mode (-p)")
    if args.output_format == "stream-json" and not args.verbose:
        parser.error("--output-format=stream-json requires --verbose with -p")
    if args.permission_mode != "bypassPermissions" and not args.dangerously_skip_permissions:
        parser.error("the runner must bypass permission prompts")
    return args


def fetch(url: str) -> str:
    import urllib.request

    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    args = parse_args(sys.argv[1:])
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    env = os.environ
    mode = env.get("FAKE_CLAUDE_MODE", "edit")
    cwd = Path.cwd()
    if env.get("FAKE_CLAUDE_ENV_DUMP"):
        Path(env["FAKE_CLAUDE_ENV_DUMP"]).write_text(json.dumps(dict(env)))

    emit({"type": "system", "subtype": "init", "cwd": str(cwd), "session_id": SESSION,
          "model": args.model or "fake-model", "permissionMode": args.permission_mode or "bypassPermissions",
          "tools": ["Bash", "Edit", "Read"]})
    for name in filter(None, env.get("FAKE_CLAUDE_PRINT_ENV", "").split(",")):
        emit({"type": "assistant", "session_id": SESSION,
              "message": {"role": "assistant", "content": [{"type": "text", "text": f"{name}={env.get(name)}"}]}})
        print(f"plain stderr-ish line with {name}={env.get(name)}", file=sys.stderr, flush=True)

    edit_default = "1" if mode in ("edit", "slow") else "0"
    if env.get("FAKE_CLAUDE_EDIT", edit_default) == "1":
        target = cwd / env.get("FAKE_CLAUDE_FILE", "fake_claude_output.txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as fh:
            fh.write(env.get("FAKE_CLAUDE_CONTENT", "edited by fake claude") + "\n")
            if env.get("FAKE_CLAUDE_FETCH_URL"):
                fh.write(fetch(env["FAKE_CLAUDE_FETCH_URL"]) + "\n")
        emit({"type": "assistant", "session_id": SESSION,
              "message": {"role": "assistant", "content": [{"type": "tool_use", "name": "Edit",
                                                             "input": {"file_path": str(target)}}]}})

    if mode == "hang":
        if env.get("FAKE_CLAUDE_CHILD_PIDFILE"):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            Path(env["FAKE_CLAUDE_CHILD_PIDFILE"]).write_text(str(child.pid))
        emit({"type": "assistant", "session_id": SESSION,
              "message": {"role": "assistant", "content": [{"type": "text", "text": "thinking forever"}]}})
        time.sleep(3600)
        return 0
    if mode == "slow":
        time.sleep(float(env.get("FAKE_CLAUDE_SLEEP", "1")))
    if mode == "crash":
        print("fake claude: simulated crash", file=sys.stderr, flush=True)
        return int(env.get("FAKE_CLAUDE_EXIT", "3"))

    is_error = mode == "error"
    emit({
        "type": "result",
        "subtype": "error_during_execution" if is_error else "success",
        "is_error": is_error,
        "duration_ms": 12,
        "num_turns": int(env.get("FAKE_CLAUDE_TURNS", "3")),
        "result": env.get("FAKE_CLAUDE_RESULT", f"done ({len(prompt)} prompt characters)"),
        "session_id": SESSION,
        "total_cost_usd": float(env.get("FAKE_CLAUDE_COST", "0.0123")),
    })
    return int(env.get("FAKE_CLAUDE_EXIT", "1")) if is_error else 0


if __name__ == "__main__":
    sys.exit(main())
