#!/usr/bin/env python3
"""A scripted stand-in for the Claude Code CLI, for the story runner's tests.

The runner's agent tests run the real CLI (tests/runner/test_real_cli_*.py). This stand-in
remains only for what the real CLI cannot be made to do on cue: exit with a chosen status
and no result event (a crash), report ``is_error`` with exit status 0, print or dump its
environment (the secret-leak tests), and push a competing commit at a chosen moment (the
fencing tests); and for git-side tests where the agent only has to leave an edit.

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
  FAKE_CLAUDE_COMMIT    1: commit the edit itself (as an agent may)
  FAKE_CLAUDE_SLEEP     seconds to sleep in slow mode (default 1)
  FAKE_CLAUDE_EXIT      exit status for crash/error modes (default 3 / 1)
  FAKE_CLAUDE_TURNS, FAKE_CLAUDE_COST   values of the result event (3, 0.0123)
  FAKE_CLAUDE_RESULT    the result text (final message)
  FAKE_CLAUDE_PRINT_ENV comma-separated env var names whose values it prints (leak test)
  FAKE_CLAUDE_ENV_DUMP  path: write the environment it received as JSON
  FAKE_CLAUDE_ARGS_DUMP path: write {"argv": [...], "prompt": "..."} as JSON
  FAKE_CLAUDE_CHILD_PIDFILE  path: in hang mode, start a sleeping child and write its pid
  FAKE_CLAUDE_COMPETE_URL, _BRANCH, _BASE, _EPOCH   push a competing commit carrying
                        "Huskies-Claim-Epoch: <EPOCH>" to BRANCH (from BASE if missing)
                        before finishing, as another claimant would
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def git(*args: str, cwd: str | Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def compete(url: str, branch: str, base: str, epoch: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exists = bool(git("ls-remote", "--heads", url, f"refs/heads/{branch}", cwd=tmp).strip())
        clone = Path(tmp) / "c"
        git("clone", "-q", "--branch", branch if exists else base, url, str(clone), cwd=tmp)
        if not exists:
            git("checkout", "-q", "-b", branch, cwd=clone)
        (clone / "competing.txt").write_text(f"pushed by a claimant with epoch {epoch}\n")
        git("add", "-A", cwd=clone)
        # An empty epoch stands for a push by a person or tool that writes no trailers.
        trailers = f"\n\nHuskies-Story: x\nHuskies-Claim-Epoch: {epoch}\nHuskies-Node: other-node" if epoch else ""
        message = "competing work" + trailers + "\n"
        git("-c", "user.name=other", "-c", "user.email=other@example.invalid",
            "commit", "-q", "-m", message, cwd=clone)
        git("push", "-q", "--force", url, f"HEAD:refs/heads/{branch}", cwd=clone)


def main() -> int:
    args = parse_args(sys.argv[1:])
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    env = os.environ
    mode = env.get("FAKE_CLAUDE_MODE", "edit")
    cwd = Path.cwd()
    if env.get("FAKE_CLAUDE_ENV_DUMP"):
        Path(env["FAKE_CLAUDE_ENV_DUMP"]).write_text(json.dumps(dict(env)))
    if env.get("FAKE_CLAUDE_ARGS_DUMP"):
        Path(env["FAKE_CLAUDE_ARGS_DUMP"]).write_text(json.dumps({"argv": sys.argv[1:], "prompt": prompt}))

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
        emit({"type": "assistant", "session_id": SESSION,
              "message": {"role": "assistant", "content": [{"type": "tool_use", "name": "Edit",
                                                             "input": {"file_path": str(target)}}]}})
        if env.get("FAKE_CLAUDE_COMMIT") == "1":
            git("add", "-A", cwd=cwd)
            git("commit", "-q", "-m", "agent's own commit", cwd=cwd)

    if env.get("FAKE_CLAUDE_COMPETE_URL"):
        compete(env["FAKE_CLAUDE_COMPETE_URL"], env["FAKE_CLAUDE_COMPETE_BRANCH"],
                env.get("FAKE_CLAUDE_COMPETE_BASE", "main"), env.get("FAKE_CLAUDE_COMPETE_EPOCH", ""))

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
