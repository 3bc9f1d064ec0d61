"""``huskies-agent stories``: every action as a real process against a real rendezvous."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

from tests.helpers.rendezvous import RendezvousProcess, free_port, synced_client

from huskies_agent.pipeline import stages


def _stories(url: str, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "huskies_agent", "stories", "--url", url, "--timeout", "10"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUSKIES_")}
    if token:  # never on the command line: from the environment, as an operator's pod could
        env["HUSKIES_RENDEZVOUS_TOKEN"] = token
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )


async def stories(url: str, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_stories, url, *args, token=token)


async def test_every_action_round_trips(rendezvous: RendezvousProcess) -> None:
    url = rendezvous.url
    done = await stories(url, "add", "s1", "--stage", "2_current", "--name", "First story", "--depends-on", "a,b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "added s1 in 2_current"
    assert (await stories(url, "add", "s2", "--name", "Second")).returncode == 0

    # The edits are on the server: a fresh replica sees them.
    async with synced_client(url) as (doc, client):
        s1 = doc.story("s1")
        assert s1 is not None and (s1.stage, s1.name, s1.depends_on) == (stages.CURRENT, "First story", ("a", "b"))
        doc.put_raw("s1", retry_count=2)
        doc.claim("s1", "node-7", time.time() - 125)
        assert await client.confirm(5)

    assert (await stories(url, "move", "s2", "3_qa")).stdout.strip() == "moved s2 to 3_qa"
    assert (await stories(url, "block", "s1")).stdout.strip() == "blocked s1"

    listing = await stories(url, "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "STAGE", "BLOCKED", "RETRIES", "CLAIMED", "BY", "EPOCH", "CLAIMED", "NAME"]
    # The claim's time (its writer's clock, 125 s ago) shows as an age, never as a Unix float.
    assert lines[1].split()[:6] == ["s1", "2_current", "yes", "2", "node-7", "1"]
    assert re.fullmatch(r"2m[5-9]s", lines[1].split()[6]), lines[1]
    assert lines[1].endswith("First story")
    # A move is a stage move at the next epoch (docs/claims.md), so s2's epoch is 1.
    assert lines[2].split() == ["s2", "3_qa", "no", "0", "-", "1", "-", "Second"]
    assert lines[-1] == "2 stories"

    assert (await stories(url, "unblock", "s1")).returncode == 0
    shown = await stories(url, "show", "s1")
    assert "blocked     no" in shown.stdout and "retries     0" in shown.stdout
    # The reset is a stage move above every epoch (docs/claims.md): it also fences the claim.
    assert "claimed by  -" in shown.stdout and "depends on  a, b" in shown.stdout


async def test_failures_exit_non_zero_with_a_message(rendezvous: RendezvousProcess) -> None:
    url = rendezvous.url
    assert (await stories(url, "add", "dup")).returncode == 0
    duplicate = await stories(url, "add", "dup")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    missing = await stories(url, "move", "ghost", "3_qa")
    assert missing.returncode == 1 and "no story 'ghost'" in missing.stderr
    bad_id = await stories(url, "add", "../etc")
    assert bad_id.returncode == 1 and "invalid story id" in bad_id.stderr
    bad_stage = await stories(url, "move", "dup", "7_nowhere")
    assert bad_stage.returncode == 2


async def test_unreachable_rendezvous() -> None:
    result = await stories(f"ws://127.0.0.1:{free_port()}/crdt-sync", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the rendezvous at ws://127.0.0.1:")
    assert result.stdout == ""
    no_url = await stories("", "list")
    assert no_url.returncode == 2 and "no rendezvous URL" in no_url.stderr
    # The token is refused on the command line (it would show in ps): a usage error naming the ways.
    on_line = await stories(f"ws://127.0.0.1:{free_port()}/crdt-sync", "--token", "s3cret", "list")
    assert on_line.returncode == 2 and "--token-file" in on_line.stderr and "s3cret" not in on_line.stderr


async def test_token_is_sent(rendezvous_factory: Callable[..., RendezvousProcess]) -> None:
    server = rendezvous_factory(token="s3cret")
    refused = await stories(server.url, "list", token="wrong")
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    added = await stories(server.url, "add", "tok", token="s3cret")
    assert added.returncode == 0, added.stderr
    assert "tok" in (await stories(server.url, "list", token="s3cret")).stdout
