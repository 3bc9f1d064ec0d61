"""A story runs in a patched build pod: extra env from a ConfigMap, a sidecar, other uids, other Secret keys.

Two halves, each with the real parts it can have here:

1. **On the test cluster** (real kube-apiserver, controllers, scheduler; kwok plays the kubelet): the
   real ``huskies-agent operator`` process starts with a ``build.pod_patch`` (envFrom a ConfigMap, a
   native sidecar, ``runtimeClassName``), other uids and other Secret key names in its settings,
   checks the patched pod at start, claims the story from a real rendezvous and creates the Job. The
   API server validates the Job on create (schema, RuntimeClass admission), the Job controller
   creates its pod from the patched template in a namespace enforcing Pod Security "restricted",
   kwok runs it to success and the StoryJob succeeds.
2. **The Job as the API server stored it is then run** by ``pod_sim`` (each container a local process
   under its securityContext uid, see pod_sim.py for what is a stand-in): env from the ConfigMap read
   back from the API server, the sidecar's command as a process beside the others, the real runner
   in clone/agent/publish under the other uids, the scripted claude as the agent, a real git HTTP
   server that demands the token from the Secret's renamed key. The pushed commit carries the
   ConfigMap's value and the sidecar's reply; the files the agent wrote belong to its uid.

kwok does not run containers, so (1) does not execute the runner, and (2) runs no kubelet; the
real-node tier (tests/realrun) is where images really run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pod_sim import IS_ROOT, pod_sim
from runner_helpers import (
    FAKE_CLAUDE,
    STORY_ID,
    STORY_TEXT,
    GitHttpServer,
    clone_branch,
    git,
    make_story_repo,
    remote_branches,
)
from tests.e2e.conftest import apply_storyjob_crd
from tests.e2e.harness import eventually, flush, kube, pipeline

from huskies_agent import contract
from huskies_agent.k8s import naming
from huskies_agent.pipeline.model import branch_for
from huskies_agent_dev.devcluster import ControlPlane
from huskies_agent_dev.localrun import free_port, start_operator, start_rendezvous

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300),
              pytest.mark.skipif(not IS_ROOT, reason="running the containers under their own uids needs root")]

TOKEN = "ghp_PATCHEDpodTOKEN0123456789abcdef012345"
ANTHROPIC = "sk-ant-PATCHED-pod-key-0123456789"
AGENT_UID, GIT_UID, SIDECAR_UID = 20001, 20002, 20003
RUNTIME_CLASS = "huskies-test-gvisor"
FROM_CONFIGMAP = "GOFLAGS=-mod=mod set by the toolchain ConfigMap"
#: The sidecar's stand-in: a tiny HTTP service on the pod's loopback that says who it runs as.
SIDECAR_CODE = (
    "import http.server, os, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = ('sidecar answered as uid %d' % os.getuid()).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
KWOK_RESULT = json.dumps({"exit_code": 0, "branch": branch_for(STORY_ID), "commit": "0123abc", "pushed": True})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitHttpServer]:
    root = tmp_path / "http-root"
    root.mkdir()
    bare = root / "project.git"
    make_story_repo(bare, {"README.md": "a project\n", f".huskies/work/2_current/{STORY_ID}.md": STORY_TEXT})
    git("config", "http.receivepack", "true", cwd=bare)
    with GitHttpServer(root, GitHttpServer.basic("x-access-token", TOKEN)) as srv:
        yield srv


def pod_patch(sidecar_port: int) -> dict[str, Any]:
    return {
        "runtimeClassName": RUNTIME_CLASS,
        "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        "initContainers": [{
            "name": "testdb", "image": "registry.invalid/testdb:1", "restartPolicy": "Always",
            "command": ["python3", "-c", SIDECAR_CODE, str(sidecar_port)],
            "securityContext": {"runAsUser": SIDECAR_UID, "runAsGroup": SIDECAR_UID, "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }],
        "containers": [{"name": contract.AGENT_CONTAINER, "envFrom": [{"configMapRef": {"name": "toolchain"}}]}],
    }


def create_runtime_class(cluster: ControlPlane) -> None:
    cluster.client.create_if_missing("/apis/node.k8s.io/v1/runtimeclasses", {
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": RUNTIME_CLASS},
        "handler": "runsc"})


async def test_a_story_runs_in_a_patched_build_pod(cluster: ControlPlane, server: GitHttpServer,
                                                   tmp_path: Path) -> None:
    apply_storyjob_crd(str(cluster.kubeconfig_path))
    create_runtime_class(cluster)
    ns = f"patched-{os.getpid() % 100000}-{free_port()}"
    cluster.create_namespace(ns)
    # Pod Security "restricted" enforced: the patched pod (its sidecar too) must still be admitted.
    cluster.client.json("PATCH", f"/api/v1/namespaces/{ns}", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}},
        content_type="application/merge-patch+json")
    sidecar_port = free_port()
    toolchain = {"FAKE_CLAUDE_CONTENT": FROM_CONFIGMAP, "FAKE_CLAUDE_FETCH_URL": f"http://127.0.0.1:{sidecar_port}/"}
    cluster.client.create_if_missing(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "toolchain"}, "data": toolchain})

    logs = tmp_path / "logs"
    logs.mkdir()
    rendezvous, url = start_rendezvous(logs)
    operator = None
    try:
        operator, _port = start_operator("patched", kubeconfig=str(cluster.kubeconfig_path), namespace=ns,
                                         rendezvous=url, log_dir=logs, env={
            "HUSKIES_BUILD_REPO_URL": server.url("project.git"),
            "HUSKIES_BUILD_GIT_SECRET": "vault-git", "HUSKIES_BUILD_GIT_TOKEN_KEY": "github-token",
            "HUSKIES_BUILD_ANTHROPIC_SECRET": "vault-anthropic", "HUSKIES_BUILD_ANTHROPIC_SECRET_KEY": "claude",
            "HUSKIES_BUILD_AGENT_UID": str(AGENT_UID), "HUSKIES_BUILD_GIT_UID": str(GIT_UID),
            "HUSKIES_BUILD_POD_PATCH": json.dumps(pod_patch(sidecar_port)),
            "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/termination-message": KWOK_RESULT}),
        })
        async with pipeline(url) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
            doc.add_story(STORY_ID, stage="2_current", name="A story in a patched pod")
            await flush(doc)

            async def succeeded() -> dict[str, Any] | None:
                for sj in await k.list_storyjobs(""):
                    if sj["spec"]["stage"] == "2_current" and (sj.get("status") or {}).get("phase") == "Succeeded":
                        return sj
                return None

            storyjob = await eventually(succeeded, 90, what="the StoryJob of 2_current succeeded (kwok)")
            job = await k.get_job(storyjob["metadata"]["name"])
            pods = (await k.request("GET", f"/api/v1/namespaces/{ns}/pods",
                                    params={"labelSelector": f"job-name={job['metadata']['name']}"}))["items"]
        assert operator.alive, operator.log()[-5000:]
    finally:
        if operator is not None:
            operator.stop()
        rendezvous.stop()

    # ---- what the API server stored and the Job controller made of it
    template = job["spec"]["template"]["spec"]
    assert template["runtimeClassName"] == RUNTIME_CLASS
    assert template["dnsConfig"] == {"options": [{"name": "ndots", "value": "2"}]}
    assert [c["name"] for c in template["initContainers"]] == [contract.CLONE_CONTAINER, "testdb"]
    containers = {c["name"]: c for c in template["initContainers"] + template["containers"]}
    assert containers["testdb"]["restartPolicy"] == "Always"
    assert containers[contract.AGENT_CONTAINER]["envFrom"] == [{"configMapRef": {"name": "toolchain"}}]
    uids = {name: c["securityContext"]["runAsUser"] for name, c in containers.items()}
    assert uids == {"clone": GIT_UID, "agent": AGENT_UID, "publish": GIT_UID, "testdb": SIDECAR_UID}
    assert {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vault-anthropic", "key": "claude"}}} \
        in containers[contract.AGENT_CONTAINER]["env"]
    assert len(pods) == 1 and pods[0]["spec"]["runtimeClassName"] == RUNTIME_CLASS
    assert [c["name"] for c in pods[0]["spec"]["initContainers"]] == [contract.CLONE_CONTAINER, "testdb"]
    assert pods[0]["metadata"]["labels"][naming.LABEL_STORY] == naming.label_value(STORY_ID)

    insecure = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-control"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    status, _body = cluster.client.raw("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All",
                                       json.dumps(insecure).encode())
    assert status == 403, "control: the namespace does not enforce Pod Security restricted"

    # ---- that Job run: the runner under the other uids, env from the ConfigMap, the sidecar beside it
    secrets = {("vault-git", "github-token"): TOKEN, ("vault-anthropic", "claude"): ANTHROPIC}
    agent_env = {contract.AGENT_CONTAINER: {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE)}}
    with pod_sim(job, secrets, agent_env, configmaps={"toolchain": toolchain}) as pod:
        runs = pod.run(timeout=120)
        for name, ran in runs.items():
            if name != "testdb":
                assert ran.returncode == 0, (name, ran.stdout[-3000:], ran.stderr[-3000:])
        agent_files = {p.name: p.stat().st_uid for p in pod.volume_dirs["work"].rglob("fake_claude_output.txt")}
        result = pod.result()
    assert {name: ran.uid for name, ran in runs.items()} == {
        "clone": GIT_UID, "testdb": SIDECAR_UID, "agent": AGENT_UID, "publish": GIT_UID}
    assert runs["testdb"].returncode is not None  # stopped once the run was over, as the kubelet does
    assert set(agent_files.values()) == {AGENT_UID}, agent_files
    assert result["exit_code"] == 0 and result["pushed"] is True, result
    assert remote_branches(server.url("project.git").replace("http://", f"http://x-access-token:{TOKEN}@"))[
        branch_for(STORY_ID)] == result["commit"]
    checkout = clone_branch(server.url("project.git").replace("http://", f"http://x-access-token:{TOKEN}@"),
                            branch_for(STORY_ID), tmp_path / "check")
    written = (checkout / "fake_claude_output.txt").read_text()
    assert FROM_CONFIGMAP in written  # the agent's env came from the ConfigMap
    assert f"sidecar answered as uid {SIDECAR_UID}" in written  # and it reached the sidecar
    everything = "".join(r.stdout + r.stderr + r.termination for r in runs.values()) + written
    assert TOKEN not in everything and ANTHROPIC not in everything
