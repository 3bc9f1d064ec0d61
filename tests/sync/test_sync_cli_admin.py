"""The CLI as an operator's admin uses it, as real processes against a real rendezvous on loopback:
installed settings and token files, filters and output formats, ``nodes`` and ``release``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from tests.helpers.rendezvous import RendezvousProcess, synced_client

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence

RendezvousFactory = Callable[..., RendezvousProcess]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUSKIES_")}
    return subprocess.run(
        [sys.executable, "-m", "huskies_agent", *args], capture_output=True, text=True, timeout=120,
        env={**clean, **(env or {})}, stdin=subprocess.DEVNULL,
    )


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, *args, env=env)


@contextlib.asynccontextmanager
async def live_node(url: str, node: str, *, capacity: int, cluster: str,
                    every: float = 0.2) -> AsyncIterator[PipelineDoc]:
    """A node that writes its presence every ``every`` seconds over a real client, as the engine does."""
    async with synced_client(url) as (doc, _client):
        async def beat() -> None:
            while True:
                doc.put_presence(NodePresence(node_id=node, last_seen=time.time(), capacity=capacity,
                                              extra={"cluster": cluster, "running": 1}))
                await asyncio.sleep(every)

        task = asyncio.create_task(beat())
        try:
            yield doc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _seed(url: str) -> None:
    """Stories in several stages, one blocked, two claimed by a node that then goes silent."""
    async with synced_client(url) as (doc, client):
        doc.add_story("10_a", stage=stages.CURRENT, name="A")
        doc.add_story("11_b", stage=stages.QA, name="B")
        doc.add_story("12_c", stage=stages.CURRENT, name="C")
        doc.add_story("13_d", stage=stages.BACKLOG, name="D")
        doc.set_blocked("12_c", True, writer="cli-seed")
        doc.claim("10_a", "gone-node", time.time() - 3600)
        claim = doc.claim("11_b", "gone-node", time.time() - 60)
        # gone-node failed once on 11_b before: its retry count is 1.
        doc.record_failure("11_b", "gone-node", claim.epoch, stages.QA, time.time(), reason="x", max_retries=3)
        doc.claim("11_b", "gone-node", time.time() - 30)
        doc.put_presence(NodePresence(node_id="gone-node", last_seen=time.time() - 900, capacity=2,
                                      extra={"cluster": "east", "running": 2}))
        assert await client.confirm(5)


def _installed(tmp_path: Path, server: RendezvousProcess, token: str) -> dict[str, str]:
    """What the chart gives the operator's container: a settings file and a token file, by env."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"rendezvous_url": server.url, "cluster_name": "west",
                                      "presence_interval_seconds": 1.0}))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return {"HUSKIES_CONFIG": str(config), "HUSKIES_RENDEZVOUS_TOKEN_FILE": str(token_file)}


async def test_installed_settings_and_token_file_need_no_flags(
    rendezvous_factory: RendezvousFactory, tmp_path: Path,
) -> None:
    server = rendezvous_factory(token="s3cret")
    env = _installed(tmp_path, server, "s3cret")
    added = await cli("stories", "add", "20_x", "--stage", "2_current", env=env)
    assert added.returncode == 0, added.stderr
    # `kubectl exec deploy/huskies-agent -- huskies-agent stories list`: no flag at all.
    listed = await cli("stories", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["20_x", "2_current"]
    # --token-file and --url given explicitly, after the action; no settings at all.
    token_file = tmp_path / "other-token"
    token_file.write_text("s3cret")
    explicit = await cli("stories", "list", "--url", server.url, "--token-file", str(token_file))
    assert explicit.returncode == 0 and "20_x" in explicit.stdout, explicit.stderr
    token_file.write_text("wrong")
    refused = await cli("stories", "list", "--url", server.url, "--token-file", str(token_file))
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    missing = await cli("stories", "list", "--url", server.url, "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "--token-file" in missing.stderr and "No such file" in missing.stderr
    # A broken settings file is named in a one-line error.
    Path(env["HUSKIES_CONFIG"]).write_text("max_concurrent: lots\n")
    broken = await cli("stories", "list", env=env)
    assert broken.returncode == 1 and "max_concurrent" in broken.stderr and "Traceback" not in broken.stderr


async def test_filters_and_output_formats(rendezvous: RendezvousProcess) -> None:
    await _seed(rendezvous.url)
    url = ["--url", rendezvous.url]
    current = await cli("stories", "list", "--stage", "2_current", *url)
    assert [line.split()[0] for line in current.stdout.splitlines()[1:-1]] == ["10_a", "12_c"]
    assert current.stdout.splitlines()[-1] == "2 stories"
    several = await cli("stories", "list", "--stage", "2_current", "--stage", "1_backlog", *url)
    assert [line.split()[0] for line in several.stdout.splitlines()[1:-1]] == ["13_d", "10_a", "12_c"]
    blocked = await cli("stories", "list", "--blocked", "-o", "json", *url)
    data = json.loads(blocked.stdout)
    assert [s["id"] for s in data["stories"]] == ["12_c"] and data["stories"][0]["blocked"] is True
    everything = yaml.safe_load((await cli("stories", "list", "-o", "yaml", *url)).stdout)
    by_id = {s["id"]: s for s in everything["stories"]}
    assert set(by_id) == {"10_a", "11_b", "12_c", "13_d"} and everything["quarantined"] == []
    claim = by_id["10_a"]["claim"]
    assert claim["node"] == "gone-node" and claim["stage"] == "2_current"
    # Times are ISO 8601 UTC with an age, never Unix floats.
    assert claim["claimed_at"].endswith("Z") and "T" in claim["claimed_at"] and claim["age"].startswith("1h")
    assert by_id["11_b"]["retries"] == 1 and by_id["13_d"]["claim"] is None
    shown = await cli("stories", "show", "10_a", *url)
    line = next(x for x in shown.stdout.splitlines() if x.startswith("claimed at"))
    assert line.split()[2].endswith("Z") and line.endswith("ago)")
    as_json = json.loads((await cli("stories", "show", "11_b", "-o", "json", *url)).stdout)
    assert as_json["claim"]["node"] == "gone-node" and as_json["stage"] == "3_qa"
    bad = await cli("stories", "list", "--stage", "9_nowhere", *url)
    assert bad.returncode == 2


async def test_nodes_reports_what_it_saw_while_watching(rendezvous: RendezvousProcess) -> None:
    await _seed(rendezvous.url)
    async with live_node(rendezvous.url, "live-node", capacity=3, cluster="west"):
        done = await cli("nodes", "--url", rendezvous.url, "--watch", "1.5", "-o", "json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        nodes = {n["node"]: n for n in data["nodes"]}
        assert nodes["live-node"]["seen"] == "alive"
        assert (nodes["live-node"]["cluster"], nodes["live-node"]["free"], nodes["live-node"]["running"]) == (
            "west", 3, 1)
        # The gone node's last_seen (its clock, 15 min ago) is shown, but only the watch decides: silent.
        gone = nodes["gone-node"]
        assert gone["seen"] == "silent" and gone["claims"] == 2 and gone["last_seen_age"].startswith("15m")
        assert data["watched_seconds"] >= 1.5
        # Watching a whole (here short) claim timeout makes a silent node dead, the operators' rule.
        dead = await cli("nodes", "--url", rendezvous.url, "--watch", "1.2", "--claim-timeout", "1")
        lines = {line.split()[0]: line for line in dead.stdout.splitlines()[1:3]}
        assert lines["gone-node"].split()[1] == "dead" and lines["live-node"].split()[1] == "alive"
        assert "LAST SEEN (ITS CLOCK)" in dead.stdout.splitlines()[0]


async def test_release_refuses_a_live_node_and_frees_a_dead_ones_claims(rendezvous: RendezvousProcess) -> None:
    await _seed(rendezvous.url)
    url = ["--url", rendezvous.url]
    async with live_node(rendezvous.url, "live-node", capacity=1, cluster="west") as live_doc:
        live_doc.claim("13_d", "live-node", time.time())  # a backlog story: any claim will do here
        await asyncio.sleep(0.5)
        refused = await cli("release", "live-node", "--watch", "1", *url)
        assert refused.returncode == 1 and "live-node is alive" in refused.stderr and "--force" in refused.stderr
        # A watch shorter than one presence interval cannot tell: refused.
        short = await cli("release", "gone-node", "--watch", "0.2", *url)
        assert short.returncode == 1 and "less than one presence interval" in short.stderr
        # Settings whose presence interval is 1 s: a 1.2 s watch is long enough to tell.
        fast = {"HUSKIES_PRESENCE_INTERVAL_SECONDS": "1"}
        dry = await cli("release", "gone-node", "--watch", "1.2", "--dry-run", *url, env=fast)
        assert dry.returncode == 0, dry.stderr
        assert "would release 2 stories" in dry.stdout and "10_a" in dry.stdout and "11_b" in dry.stdout
        released = await cli("release", "gone-node", "--watch", "1.2", *url, env=fast)
        assert released.returncode == 0, released.stderr
        assert "gone-node: silent" in released.stdout and "by its own clock" in released.stdout
        assert "released 2 stories" in released.stdout and "retries 1 -> 0" in released.stdout
        forced = await cli("release", "live-node", "--watch", "1", "--force", *url, env=fast)
        assert forced.returncode == 0 and "released anyway: --force" in forced.stdout, forced.stderr
    # A fresh replica sees the claims fenced by a person's move, in the stage each story was in.
    async with synced_client(rendezvous.url) as (doc, _client):
        a, b, d = doc.story("10_a"), doc.story("11_b"), doc.story("13_d")
        assert a is not None and b is not None and d is not None
        assert (a.stage, a.claimed_by, b.stage, b.claimed_by, d.claimed_by) == (
            stages.CURRENT, "", stages.QA, "", "")
        assert a.moved_by.startswith("cli-") and b.retry_count == 0
        # The gone node's late completion loses: nothing advances.
        old = a.entry_of("gone-node")
        assert old is not None and doc.complete("10_a", "gone-node", old.epoch, stages.CURRENT, time.time()) is None
    nothing = await cli("release", "gone-node", *url)
    assert nothing.returncode == 0 and "holds no claims" in nothing.stdout
    unknown = await cli("release", "nobody", *url)
    assert unknown.returncode == 1 and "no node 'nobody'" in unknown.stderr


@pytest.mark.parametrize("command", [["stories", "list"], ["nodes", "--watch", "0"], ["release", "x"]])
async def test_every_admin_command_takes_its_flags_anywhere(command: list[str], rendezvous: RendezvousProcess) -> None:
    before = await cli(command[0], "--url", rendezvous.url, "--log-level", "warning", *command[1:])
    after = await cli(*command, "--url", rendezvous.url, "--log-level", "warning")
    assert before.returncode == after.returncode and before.stdout.splitlines()[:1] == after.stdout.splitlines()[:1]
    assert "Traceback" not in before.stderr + after.stderr


async def test_release_refuses_when_the_link_drops_during_the_watch(rendezvous: RendezvousProcess) -> None:
    """Silence while cut off says nothing about a node (claims.Liveness): nothing is released."""
    await _seed(rendezvous.url)
    before = rendezvous.logs().count(" connected (")
    run = asyncio.create_task(cli("release", "gone-node", "--watch", "5", "--url", rendezvous.url,
                                  env={"HUSKIES_PRESENCE_INTERVAL_SECONDS": "1"}))
    deadline = time.monotonic() + 30
    while rendezvous.logs().count(" connected (") == before:  # wait for the command's connection
        assert time.monotonic() < deadline and not run.done(), "the command never connected"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # it syncs (milliseconds) and watches
    await rendezvous.akill()
    done = await run
    assert done.returncode == 1 and "dropped while watching" in done.stderr, done.stderr
    await rendezvous.astart()
    async with synced_client(rendezvous.url) as (doc, _client):
        story = doc.story("10_a")
        assert story is not None and story.claimed_by == "gone-node"
