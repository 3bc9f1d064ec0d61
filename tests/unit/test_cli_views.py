"""The admin commands' pure parts as tables: times, filters, node verdicts, release refusals, and
where the URL and token come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from huskies_agent.commands import views
from huskies_agent.commands.connect import CommandError, UsageError, resolve_target
from huskies_agent.commands.release_cmd import refusal
from huskies_agent.pipeline.model import Claim, NodePresence, Story

NOW = 1_796_212_800.0  # 2026-12-02T12:00:00Z


@pytest.mark.parametrize(("stamp", "iso"), [
    (NOW, "2026-12-02T12:00:00Z"),
    (NOW - 0.9, "2026-12-02T11:59:59Z"),
    (0.0, ""),  # never written
    (-5.0, ""),
    (float("inf"), ""),
    (float("nan"), ""),
    (1e300, ""),  # past year 9999: no crash, nothing shown
])
def test_iso_utc(stamp: float, iso: str) -> None:
    assert views.iso_utc(stamp) == iso


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m"), (192, "3m12s"), (3600, "1h"), (7500, "2h5m"),
    (86400, "1d"), (3 * 86400 + 4 * 3600 + 59, "3d4h"), (-192, "3m12s"), (float("inf"), "?"),
])
def test_age(seconds: float, text: str) -> None:
    assert views.age(seconds) == text


@pytest.mark.parametrize(("stamp", "when", "short"), [
    (NOW - 312, "2026-12-02T11:54:48Z (5m12s ago)", "5m12s"),
    # The writer's clock is ahead of ours: said so, not hidden.
    (NOW + 3, "2026-12-02T12:00:03Z (3s ahead)", "-3s"),
    (0.0, "-", "-"),
])
def test_when_and_short_age(stamp: float, when: str, short: str) -> None:
    assert views.when(stamp, NOW) == when
    assert views.short_age(stamp, NOW) == short


def test_table_aligns_and_escapes_control_characters() -> None:
    lines = views.table(("A", "LONGER"), [("x", "1"), ("long\nline", "2")])
    assert lines == ["A           LONGER", "x           1", "long\\nline  2"]


def _story(sid: str, stage: str, *, blocked: bool = False, holder: str = "", at: float = 0.0) -> Story:
    claim = Claim(holder, 1, at=at, stage=stage) if holder else None
    return Story(sid, stage, name=sid.upper(), blocked=blocked, claim=claim, top_epoch=1 if holder else 0,
                 claims=(claim,) if claim else ())


STORIES = [
    _story("3_c", "3_qa"), _story("1_a", "2_current", holder="n1", at=NOW - 60),
    _story("2_b", "2_current", blocked=True), _story("4_d", "1_backlog", blocked=True),
]


@pytest.mark.parametrize(("stages", "blocked", "ids"), [
    ((), False, ["4_d", "1_a", "2_b", "3_c"]),  # by stage order, then id
    (("2_current",), False, ["1_a", "2_b"]),
    (("2_current", "3_qa"), False, ["1_a", "2_b", "3_c"]),
    ((), True, ["4_d", "2_b"]),
    (("2_current",), True, ["2_b"]),
    (("5_done",), False, []),
])
def test_story_filters(stages: tuple[str, ...], blocked: bool, ids: list[str]) -> None:
    keep = views.StoryFilter(frozenset(stages), blocked)
    assert [s.story_id for s in views.select(STORIES, keep)] == ids
    assert keep.active == bool(stages or blocked)


@pytest.mark.parametrize("output", [views.Output.JSON, views.Output.YAML])
def test_story_documents_parse_back_with_iso_times(output: views.Output) -> None:
    text = views.dump(views.stories_document(views.select(STORIES, views.StoryFilter()), {"bad": "why"}, NOW),
                      output)
    data = json.loads(text) if output is views.Output.JSON else yaml.safe_load(text)
    first = data["stories"][1]
    assert first["id"] == "1_a" and first["claim"] == {
        "node": "n1", "epoch": 1, "stage": "2_current", "claimed_at": "2026-12-02T11:59:00Z", "age": "1m ago"}
    assert data["stories"][0]["claim"] is None and data["quarantined"] == [{"key": "bad", "reason": "why"}]


def test_story_table_and_text() -> None:
    table = views.stories_table(views.select(STORIES, views.StoryFilter()), {}, NOW).splitlines()
    assert table[0].split() == ["ID", "STAGE", "BLOCKED", "RETRIES", "CLAIMED", "BY", "EPOCH", "CLAIMED", "NAME"]
    assert table[2].split() == ["1_a", "2_current", "no", "0", "n1", "1", "1m", "1_A"]
    assert table[-1] == "4 stories"
    text = views.story_text(STORIES[1], NOW)
    assert "claimed at  2026-12-02T11:59:00Z (1m ago)" in text and "claimed by  n1" in text


@pytest.mark.parametrize(("heard", "silent", "timeout", "seen"), [
    (True, 0.5, 600, views.Seen.ALIVE),
    (False, 5, 600, views.Seen.SILENT),  # a short watch cannot tell
    (False, 600, 600, views.Seen.DEAD),  # a whole claim timeout of silence, as claims.Liveness says
    (True, 700, 600, views.Seen.DEAD),  # heard once, then silent for a whole timeout
])
def test_node_verdict(heard: bool, silent: float, timeout: float, seen: views.Seen) -> None:
    assert views.verdict(heard, silent, timeout) is seen


def test_node_views_cover_presence_and_claim_holders() -> None:
    nodes = {
        "a": NodePresence("a", NOW - 10, capacity=2, extra={"cluster": "east", "running": 1.0}),
        "b": NodePresence("b", NOW - 9999, capacity=None, extra={"paused": "daily-budget"}),
    }
    found = views.node_views(nodes, ["a", "c", "c"], {"a"}, {"a": 0.2, "b": 5.0, "c": 5.0}, claim_timeout=600)
    assert [(v.node_id, v.seen, v.claims) for v in found] == [
        ("a", views.Seen.ALIVE, 1), ("b", views.Seen.SILENT, 0), ("c", views.Seen.SILENT, 2)]
    records = {r["node"]: r for r in views.nodes_document(found, watched=5, claim_timeout=600, now=NOW)["nodes"]}
    assert records["a"]["cluster"] == "east" and records["a"]["free"] == 2 and records["a"]["running"] == 1
    assert records["b"]["paused"] == "daily-budget" and records["b"]["last_seen_age"] == "2h46m ago"
    assert records["c"]["last_seen"] is None  # holds claims but never wrote presence
    table = views.nodes_table(found, watched=5, claim_timeout=600, now=NOW).splitlines()
    assert table[1].split()[:7] == ["a", "alive", "east", "2", "1", "1", "-"]
    assert "(no presence entry)" in table[3]


def _view(seen: views.Seen) -> views.NodeView:
    return views.NodeView("n", None, seen, 0.0, 1)


@pytest.mark.parametrize(("seen", "watched", "interval", "force", "refused"), [
    (views.Seen.ALIVE, 60, 30, False, "is alive"),
    (views.Seen.ALIVE, 60, 30, True, ""),  # a person's explicit override
    (views.Seen.SILENT, 10, 30, False, "less than one presence interval"),
    (views.Seen.SILENT, 10, 30, True, ""),
    (views.Seen.SILENT, 60, 30, False, ""),  # silent for two presence intervals: not writing
    (views.Seen.DEAD, 600, 30, False, ""),
])
def test_release_refusals(seen: views.Seen, watched: float, interval: float, force: bool, refused: str) -> None:
    why = refusal(_view(seen), watched=watched, presence_interval=interval, force=force)
    assert (refused in why) if refused else why == ""


# ---------------------------------------------------------------------- where the URL and token come from

def _files(tmp_path: Path, config: dict[str, object] | None, token: str | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env["HUSKIES_CONFIG"] = str(path)
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        env["HUSKIES_RENDEZVOUS_TOKEN_FILE"] = str(tmp_path / "token")
    return env


URL_A, URL_B = "ws://a:1/crdt-sync", "ws://b:2/crdt-sync"


@pytest.mark.parametrize(("flag_url", "flag_token", "config", "env_token_file", "env", "url", "token"), [
    # In the operator's pod: the settings file and the token file, both named by the chart's env.
    ("", None, {"rendezvous_url": URL_A}, "from-pod", {}, URL_A, "from-pod"),
    # Flags win over the settings.
    (URL_B, "from-flag", {"rendezvous_url": URL_A}, "from-pod", {}, URL_B, "from-flag"),
    # HUSKIES_* variables win over the file, as for the operator.
    ("", None, {"rendezvous_url": URL_A}, None,
     {"HUSKIES_RENDEZVOUS_URL": URL_B, "HUSKIES_RENDEZVOUS_TOKEN": "from-env"}, URL_B, "from-env"),
    # The token written in the settings file itself.
    ("", None, {"rendezvous_url": URL_A, "rendezvous_token": "in-file"}, None, {}, URL_A, "in-file"),
    # No settings at all: flags alone.
    (URL_A, None, None, None, {}, URL_A, ""),
])
def test_resolve_target(tmp_path: Path, flag_url: str, flag_token: str | None, config: dict[str, object] | None,
                        env_token_file: str | None, env: dict[str, str], url: str, token: str) -> None:
    environ = {**_files(tmp_path, config, env_token_file), **env}
    token_file = ""
    if flag_token is not None:
        token_file = str(tmp_path / "flag-token")
        Path(token_file).write_text(flag_token)
    target = resolve_target(url=flag_url, token_file=token_file, environ=environ)
    assert (target.url, target.token) == (url, token)


def test_resolve_target_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no rendezvous URL"):
        resolve_target(environ={})
    with pytest.raises(CommandError, match="--token-file .*nope"):
        resolve_target(url=URL_A, token_file=str(tmp_path / "nope"), environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CommandError, match="empty"):
        resolve_target(url=URL_A, token_file=str(tmp_path / "empty"), environ={})
    bad = _files(tmp_path, {"rendezvous_url": URL_A, "max_concurrent": "lots"})
    with pytest.raises(CommandError, match="max_concurrent"):
        resolve_target(environ=bad)
    # With both flags the broken settings are not needed, so they do not stop the command.
    (tmp_path / "t").write_text("x")
    assert resolve_target(url=URL_B, token_file=str(tmp_path / "t"), environ=bad).url == URL_B
    # Settings supply the watch defaults of `nodes`/`release`.
    timed = _files(tmp_path, {"rendezvous_url": URL_A, "presence_interval_seconds": 7, "claim_timeout_seconds": 70})
    target = resolve_target(environ=timed)
    assert (target.presence_interval, target.claim_timeout) == (7, 70)
