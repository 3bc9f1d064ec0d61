"""A story on real pods, end to end, and a lost claim on real pods (issue 14, items 5 and 6).

The chart is installed from the registry with the README quickstart's values; the operator runs
on the real node and joins a real rendezvous; the story's build pod (the runner image: ``clone``,
then ``agent`` and ``publish``) runs on the real node, clones from a real git server over HTTP with
the token from the git Secret, and the image's real Claude Code CLI talks to the scripted Messages
API (tests/helpers/model_server.py) with the key from the Anthropic Secret. Both servers run on the
host's loopback; the pods reach them through the node namespace's forwards at the bridge gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.chart.chartlib import Helm
from tests.e2e.harness import StageLog, eventually, flush, pipeline, pretend_node
from tests.helpers.model_server import ModelServer, Reply, request_text, text, tool_results, tool_use
from tests.realrun.conftest import NODE, Published
from tests.realrun.node import RealNode
from tests.realrun.stack import Rendezvous, run_rendezvous
from tests.realrun.story import (
    ANTHROPIC_KEY,
    ZERO,
    GitServer,
    Install,
    PodRecord,
    PodTimeline,
    branch_of,
    format_table,
    install_chart,
    operator_ready,
    pod_log_lines,
    story_text,
    storyjob_table,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

RELEASE = "huskies-story"
NS = "huskies-story"
STORY = "61_add_widget"
CONTESTED = "62_contested"
WINNER = "other-node"
#: The runner's exit code for a fenced push (docs/runner.md).
FENCED = 14


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitServer, ModelServer]]:
    with GitServer(tmp_path_factory.mktemp("git"), [STORY, CONTESTED]) as git_server, ModelServer() as model:
        yield git_server, model


@pytest.fixture(scope="module")
def story_rendezvous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendezvous]:
    """A rendezvous of this module's own: the document starts empty, whatever ran before."""
    with run_rendezvous(tmp_path_factory.mktemp("story-rendezvous")) as running:
        yield running


@pytest.fixture(scope="module")
def custom(cluster: Any) -> Iterator[Any]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    try:
        yield client.CustomObjectsApi(api)
    finally:
        api.close()


@pytest.fixture(scope="module")
def installed(
    real_node: RealNode, published: Published, story_rendezvous: Rendezvous, servers: tuple[GitServer, ModelServer],
    realrun_helm: Helm, cluster: Any, core: Any, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Install]:
    git_server, model = servers
    with install_chart(
        realrun_helm, Path(cluster.kubeconfig_path), core, published, release=RELEASE, namespace=NS,
        rendezvous=story_rendezvous, git_server=git_server, model_port=int(model.server_address[1]),
        node=real_node, workdir=tmp_path_factory.mktemp("story-install"),
    ) as install:
        wait_until(lambda: operator_ready(core, NS), "the operator Ready on the real node", 300,
                   lambda: operator_log(real_node) + "\nkubelet:\n" + real_node.tail("kubelet", 30))
        yield install


def operator_log(node: RealNode) -> str:
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in node.pod_logs.glob(f"{NS}_*/operator/*.log"))


def storyjobs(custom: Any, story_id: str) -> list[dict[str, Any]]:
    items = custom.list_namespaced_custom_object("huskies.dev", "v1alpha1", NS, "storyjobs")["items"]
    return [sj for sj in items if sj["spec"]["storyId"] == story_id]


def phase(sj: dict[str, Any]) -> str:
    return str((sj.get("status") or {}).get("phase") or "")


def diagnose(custom: Any, pods: PodTimeline, node: RealNode, model: ModelServer, story_id: str) -> str:
    out = [f"model server: {len(model.main_requests)} main requests, problems {model.problems}"]
    for sj in storyjobs(custom, story_id):
        out.append(f"storyjob {sj['metadata']['name']} {sj['spec']['stage']}: {json.dumps(sj.get('status'))[:1500]}")
    for rec in list(pods.pods.values()):
        out.append(f"pod {rec.name}: {json.dumps(rec.last.get('status') or {})[:3000]}")
        for container in ("clone", "agent", "publish"):
            lines = pod_log_lines(node, NS, rec.name, container)
            out.append(f"--- {container}:\n" + "\n".join(t for _, t in lines[-25:]))
    out.append("operator:\n" + operator_log(node)[-6000:])
    out.append("kubelet:\n" + node.tail("kubelet", 20))
    return "\n".join(out)


def describe_requests(model: ModelServer) -> str:
    """Each request the model server got: its step, and what the last message carried."""
    out = [f"problems: {model.problems}"]
    for r in list(model.requests):
        messages = r.body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content")
        kinds = [b.get("type") for b in content if isinstance(b, dict)] if isinstance(content, list) else "text"
        out.append(f"{r.method} {r.path} step={r.step!r} stream={r.body.get('stream')} "
                   f"tools={len(r.body.get('tools') or [])} messages={len(messages)} "
                   f"last={last.get('role')}:{kinds} {request_text(r.body)[-300:]!r}")
    return "\n".join(out)


def pod_of(pods: PodTimeline, sj: dict[str, Any]) -> PodRecord:
    job = sj["status"]["jobName"]
    found = pods.of_job(f"{job}-")
    assert len(found) == 1, f"pods of {job}: {[r.name for r in found]}"
    return found[0]


async def test_a_story_runs_end_to_end_on_real_pods(
    installed: Install, servers: tuple[GitServer, ModelServer], story_rendezvous: Rendezvous,
    real_node: RealNode, core: Any, custom: Any, published: Published,
) -> None:
    git_server, model = servers
    model.load([
        # The coder: edit a file, then finish.
        Reply([text("Adding the widget."),
               tool_use("Write", {"file_path": "widget.py", "content": "WIDGET = True\n"})]),
        Reply([text("Added widget.py.")], expect_tool_result="widget.py", expect_tool_error=False),
        # QA and the mergemaster find nothing to change.
        Reply([text("APPROVED: widget.py is there.")]),
        Reply([text("Up to date with main; ready to land.")]),
    ])
    branch = branch_of(STORY)
    with PodTimeline(core, NS) as pods:
        async with pipeline(story_rendezvous.url) as doc:
            stages = StageLog(doc)
            doc.add_story(STORY, stage="2_current", name="Add a widget")
            await flush(doc)
            try:
                await eventually(lambda: doc.story(STORY) is not None and doc.story(STORY).stage == "5_done",
                                 600, interval=0.5, what="the story through 3_qa and 4_merge to 5_done")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{diagnose(custom, pods, real_node, model, STORY)}") from None
            assert stages.history[STORY] == ["2_current", "3_qa", "4_merge", "5_done"]
            stages.close()

    # One StoryJob and one Job per stage, all Succeeded; the coder's carries the pushed commit.
    by_stage = {sj["spec"]["stage"]: sj for sj in storyjobs(custom, STORY)}
    assert sorted(by_stage) == ["2_current", "3_qa", "4_merge"]
    assert {s: phase(sj) for s, sj in by_stage.items()} == dict.fromkeys(by_stage, "Succeeded")
    coder = by_stage["2_current"]
    tip = git_server.branches()[branch]
    assert coder["status"]["commit"] == tip and coder["status"]["pushed"] is True
    assert coder["status"]["result"]["branch"] == branch

    # The branch on the git server holds the agent's change, with the run's fencing trailers.
    assert git_server.show(f"{tip}:widget.py") == "WIDGET = True\n"
    assert git_server.trailers(tip) == {
        "Huskies-Story": STORY, "Huskies-Stage": "2_current", "Huskies-Claim-Epoch": str(coder["spec"]["epoch"]),
        "Huskies-Node": coder["spec"]["node"], "Huskies-Outcome": "completed",
    }
    ref = f"refs/heads/{branch}"
    assert git_server.ref_updates(ref) == [(ref, ZERO, tip)], "one push: the coder's; QA and merge changed nothing"
    assert git_server.branches()["main"] == git_server.main_sha

    # What `kubectl get storyjobs -o wide` shows (the API server's table of the CRD's columns).
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(installed.kubeconfig))
    try:
        columns, rows = storyjob_table(api, NS)
    finally:
        api.close()
    print(format_table(columns, rows))
    table = [dict(zip(columns, row, strict=True)) for row in rows]
    assert {(r["Story"], r["Stage"], r["Phase"]) for r in table if r["Story"] == STORY} == {
        (STORY, "2_current", "Succeeded"), (STORY, "3_qa", "Succeeded"), (STORY, "4_merge", "Succeeded")}
    assert next(r for r in table if r["Stage"] == "2_current" and r["Story"] == STORY)["Commit"] == tip

    # Real pods on the real node: the runner image from the registry, three containers, all exit 0.
    pod = pod_of(pods, coder)
    spec, status = pod.last["spec"], pod.last["status"]
    assert spec["nodeName"] == NODE and status["podIP"].startswith("10.252.0.")
    assert [c["name"] for c in spec["initContainers"]] == ["clone"]
    assert [c["name"] for c in spec["containers"]] == ["agent", "publish"]
    assert {c["image"] for c in spec["initContainers"] + spec["containers"]} == {published.runner_image}
    for name in ("clone", "agent", "publish"):
        assert pod.terminated(name).get("exitCode") == 0, (name, pod.container(name))
    assert json.loads(pod.terminated("publish")["message"])["commit"] == tip
    # The agent container's log (the node's podLogsDir) has the CLI's stream-json, ending in a result.
    events = []
    for _stamp, line in pod_log_lines(real_node, NS, pod.name, "agent"):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    assert any(e.get("type") == "result" and e.get("subtype") == "success" for e in events), events[-5:]

    # The real CLI in the pod talked to the scripted API: the key from the Secret, the story's prompt,
    # its working directory the pod's checkout.
    assert model.problems == [] and model.unused_steps == 0, describe_requests(model)
    first = model.main_requests[0]
    assert first.headers.get("x-api-key") == ANTHROPIC_KEY
    prompt = request_text(first.body)
    assert story_text(STORY).splitlines()[0] in prompt and "/work/repo" in prompt
    assert "You are QA for this story." in request_text(model.main_requests[2].body)


async def test_a_lost_claim_stops_the_real_pod_and_its_work_never_lands(
    installed: Install, servers: tuple[GitServer, ModelServer], story_rendezvous: Rendezvous,
    real_node: RealNode, core: Any, custom: Any, tmp_path: Path,
) -> None:
    git_server, model = servers
    model.load([
        Reply([text("Writing my part."),
               tool_use("Write", {"file_path": "loser.txt", "content": "the loser's work\n"})]),
        # The agent's next turn stalls: it is busy when its claim is lost.
        Reply([text("never sent: the run is stopped first")], delay=900),
    ])
    branch = branch_of(CONTESTED)
    ref = f"refs/heads/{branch}"
    with PodTimeline(core, NS) as pods:
        async with pipeline(story_rendezvous.url) as doc:
            doc.add_story(CONTESTED, stage="2_current", name="Contested")
            await flush(doc)
            try:
                await eventually(lambda: len(model.main_requests) >= 2, 300, interval=0.5,
                                 what="the agent's second model request (loser.txt written)")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{diagnose(custom, pods, real_node, model, CONTESTED)}") from None
            results = tool_results(model.main_requests[1].body)
            assert results and not results[0].get("is_error"), results  # the agent wrote loser.txt
            await eventually(lambda: phase(storyjobs(custom, CONTESTED)[0]) == "Running", 30, what="StoryJob Running")
            [sj] = storyjobs(custom, CONTESTED)
            epoch, loser = int(sj["spec"]["epoch"]), sj["spec"]["node"]
            pod = pod_of(pods, sj)
            await eventually(lambda: pod.running, 30, what="the pod Running")
            assert pod.last["spec"]["nodeName"] == NODE

            # Another node takes the story over at a higher epoch (its own claim entry, docs/claims.md)
            # and its run pushes the branch. It pushes first here, so the order is certain: the loser
            # is still working when the winner's branch exists.
            winner = git_server.push_as_node(CONTESTED, epoch=epoch + 1, node=WINNER,
                                             files={"winner.txt": "the winner's work\n"}, work=tmp_path / "winner")
            pretend_node(doc, WINNER)
            doc.claim(CONTESTED, WINNER, time.time())
            await flush(doc)
            story = doc.story(CONTESTED)
            assert story is not None and (story.claimed_by, story.epoch) == (WINNER, epoch + 1)

            # The operator deletes the Job and its pod at once; the pod's containers get SIGTERM and end.
            try:
                await eventually(lambda: phase(storyjobs(custom, CONTESTED)[0]) == "Lost", 60, what="StoryJob Lost")
                ended = await eventually(lambda: (rec := pods.get(pod.name)) is not None and rec.gone and rec, 200,
                                         interval=0.5, what="the build pod ended and was removed")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{diagnose(custom, pods, real_node, model, CONTESTED)}") from None
            assert ended.deleting and ended.deleting <= ended.gone
            agent, publish = ended.terminated("agent"), ended.terminated("publish")
            print(f"agent: {agent}\npublish: {publish}")
            # The agent phase, stopped by SIGTERM, killed the CLI and handed its snapshot over (exit 0:
            # the run's result is the publisher's, docs/runner.md); the publisher, stopped too, found
            # the winner's tip of a higher epoch and pushed nothing.
            assert agent.get("exitCode") == 0 and agent.get("finishedAt"), ended.last.get("status")
            assert publish.get("exitCode") == FENCED, ended.last.get("status")
            result = json.loads(publish["message"])
            assert result["pushed"] is False and result["epoch"] == epoch
            assert "stopped by SIGTERM" in result["error"] and f"claim epoch {epoch + 1}" in result["error"]

            # The winner's branch is untouched: the one update the server ever accepted is the winner's.
            assert git_server.branches()[branch] == winner
            assert git_server.ref_updates(ref) == [(ref, ZERO, winner)]
            assert "loser.txt" not in git_server.show(f"{winner}^{{tree}}")
            assert git_server.trailers(winner)["Huskies-Node"] == WINNER != loser

            # The live winner's claim stands and the loser does not start the story again.
            await eventually(lambda: phase(storyjobs(custom, CONTESTED)[0]) == "Lost", 5, what="still Lost")
            await asyncio.sleep(3)
            story = doc.story(CONTESTED)
            assert story is not None and story.claimed_by == WINNER
            assert len(storyjobs(custom, CONTESTED)) == 1
