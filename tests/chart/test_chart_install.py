"""The chart against a real kube-apiserver: helm install, the StoryJob printer columns, and RBAC.

RBAC is proved three ways: SubjectAccessReviews of every verb the operator needs (allowed) and
of what it must not do (denied); the operator's own API code (huskies_agent.k8s.api, leadership)
run with a real TokenRequest token of the chart's ServiceAccount; and forbidden requests made with
that token.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART, CI_VALUES, Helm

pytestmark = pytest.mark.apiserver

RELEASE = "huskies-agent"
NS = "huskies-chart"
OTHER_NS = "huskies-chart-other"
SA = "huskies-agent"
BUILD_SA = "huskies-agent-build"
SA_USER = f"system:serviceaccount:{NS}:{SA}"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"]
DEFAULT = CI_VALUES / "default-values.yaml"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


@dataclass
class Install:
    plane: Any
    kubeconfig: Path
    api: Any  # kubernetes.client.ApiClient (admin)
    notes: str


def _admin_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def _wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def install(helm: Helm, apiserver: Any) -> Iterator[Install]:
    from kubernetes import client

    kubeconfig = Path(apiserver.kubeconfig_path)
    apiserver.create_namespace(OTHER_NS)
    apiserver.create_namespace(NS)
    # The install namespace enforces the "restricted" Pod Security Standard (see test_pod_security).
    client.CoreV1Api(_admin_client(kubeconfig)).patch_namespace(NS, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    proc = helm.run(
        "install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace", "--wait=false",
        "-f", str(DEFAULT),
        "--set", "rendezvous.existingSecret=huskies-rendezvous",
        "--set", "build.git.existingSecret=huskies-git",
        "--set", "build.anthropic.existingSecret=huskies-anthropic",
        "--set", "build.repoUrl=https://git.example.com/app.git",
        kubeconfig=kubeconfig,
    )
    api = _admin_client(kubeconfig)
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("storyjobs.huskies.dev")
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    _wait(established, "the StoryJob CRD to be established")
    # Secrets the operator must not be able to read (they exist, so a 403 is RBAC, not a 404).
    core = client.CoreV1Api(api)
    for ns in (NS, OTHER_NS):
        core.create_namespaced_secret(ns, {"metadata": {"name": "huskies-rendezvous"}, "stringData": {"token": "x"}})
    try:
        yield Install(apiserver, kubeconfig, api, proc.stdout)
    finally:
        helm.run("uninstall", RELEASE, "--namespace", NS, kubeconfig=kubeconfig, check=False)
        api.close()


# ------------------------------------------------------------------------------------------ install


def test_install_creates_the_objects(install: Install, helm: Helm) -> None:
    from kubernetes import client

    api = install.api
    deployment = client.AppsV1Api(api).read_namespaced_deployment(RELEASE, NS)
    assert deployment.spec.replicas == 2
    assert deployment.spec.template.spec.service_account_name == SA
    core = client.CoreV1Api(api)
    config = core.read_namespaced_config_map(f"{RELEASE}-config", NS)
    settings = yaml.safe_load(config.data["config.yaml"])
    assert settings["rendezvous_url"] == "ws://huskies-rendezvous:3001/crdt-sync"
    assert settings["build"]["git_secret"] == "huskies-git"
    core.read_namespaced_service_account(SA, NS)
    assert core.read_namespaced_service_account(BUILD_SA, NS).automount_service_account_token is False
    core.read_namespaced_service(f"{RELEASE}-metrics", NS)
    client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(RELEASE, NS)
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.read_namespaced_role(RELEASE, NS)
    rbac.read_namespaced_role_binding(RELEASE, NS)
    assert not [r for r in rbac.list_cluster_role().items if r.metadata.name.endswith(RELEASE)]
    status = json.loads(helm.run("status", RELEASE, "-n", NS, "-o", "json", kubeconfig=install.kubeconfig).stdout)
    assert status["info"]["status"] == "deployed"


def test_install_notes(install: Install) -> None:
    notes = install.notes.split("NOTES:", 1)[1]
    for text in (
        f"kubectl -n {NS} get storyjobs",
        f"kubectl -n {NS} create secret generic huskies-rendezvous --from-literal=token=",
        f"kubectl -n {NS} create secret generic huskies-git",
        f"kubectl -n {NS} create secret generic huskies-anthropic --from-literal=api-key=",
        f"get lease {RELEASE}-leader",
        "/metrics",
    ):
        assert text in notes, text


def test_upgrade_with_a_config_change_rolls_the_pods(install: Install, helm: Helm) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(install.api)

    def checksum() -> str:
        d = apps.read_namespaced_deployment(RELEASE, NS)
        return str(d.spec.template.metadata.annotations["checksum/config"])

    before = checksum()
    helm.run("upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", "--set", "maxConcurrent=7",
             "--wait=false", kubeconfig=install.kubeconfig)
    try:
        assert checksum() != before
        cm = client.CoreV1Api(install.api).read_namespaced_config_map(f"{RELEASE}-config", NS)
        assert yaml.safe_load(cm.data["config.yaml"])["max_concurrent"] == 7
    finally:
        helm.run("rollback", RELEASE, "1", "-n", NS, "--wait=false", kubeconfig=install.kubeconfig)
    assert checksum() == before


def _table(api: Any, path: str) -> dict[str, Any]:
    method, url, headers, body, _ = api.param_serialize(
        "GET", path, header_params={"Accept": TABLE}, auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers, body=body)
    resp.read()
    assert resp.status == 200, resp.data
    data: dict[str, Any] = json.loads(resp.data)
    return data


def test_storyjob_printer_columns(install: Install) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(install.api)
    body = {
        "apiVersion": "huskies.dev/v1alpha1", "kind": "StoryJob",
        "metadata": {"name": "story-printer-e1"},
        "spec": {"storyId": "PRINTER-1", "stage": "3_qa", "node": "eu-builders", "epoch": 1},
    }
    custom.create_namespaced_custom_object("huskies.dev", "v1alpha1", NS, "storyjobs", body)
    custom.patch_namespaced_custom_object_status(
        "huskies.dev", "v1alpha1", NS, "storyjobs", "story-printer-e1", {"status": {"phase": "Running"}})
    try:
        table = _table(install.api, f"/apis/huskies.dev/v1alpha1/namespaces/{NS}/storyjobs")
        assert table["kind"] == "Table"
        columns = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
        assert columns[1:] == ["Story", "Stage", "Phase", "Reason", "Started", "Age"], columns  # after Name
        wide = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) > 0]
        assert wide == ["Node", "Epoch", "Job", "Commit", "Cost"]
        (row,) = table["rows"]
        names = [c["name"] for c in table["columnDefinitions"]]
        cells = dict(zip(names, row["cells"], strict=True))
        assert cells["Name"] == "story-printer-e1"
        assert (cells["Story"], cells["Stage"], cells["Phase"], cells["Node"]) == (
            "PRINTER-1", "3_qa", "Running", "eu-builders")
        assert cells["Epoch"] == 1
        # the short name and category resolve (kubectl get sj / kubectl get huskies)
        resources = client.CustomObjectsApi(install.api).get_api_resources("huskies.dev", "v1alpha1")
        storyjobs = next(r for r in resources.resources if r.name == "storyjobs")
        assert storyjobs.short_names == ["sj"] and storyjobs.categories == ["huskies"]
    finally:
        custom.delete_namespaced_custom_object("huskies.dev", "v1alpha1", NS, "storyjobs", "story-printer-e1")


@pytest.mark.parametrize(("sets", "named"), [
    (["maxConcurrent=-1"], "maxConcurrent"),
    (["rendezvous.url=https://rendezvous.example.com/crdt-sync"], "rendezvous"),
    (["rendezvous.url="], "rendezvous"),
])
def test_bad_values_fail_install(install: Install, helm: Helm, sets: list[str], named: str) -> None:
    args = ["install", "huskies-bad", str(CHART), "--namespace", NS, "--wait=false", "-f", str(DEFAULT)]
    for s in sets:
        args += ["--set", s]
    proc = helm.run(*args, kubeconfig=install.kubeconfig, check=False)
    assert proc.returncode != 0
    assert named in proc.stderr and ("url" in proc.stderr if named == "rendezvous" else True), proc.stderr
    releases = json.loads(helm.run("list", "-n", NS, "-a", "-o", "json", kubeconfig=install.kubeconfig).stdout)
    assert [r["name"] for r in releases] == [RELEASE]


def test_pod_security_restricted(install: Install, tmp_path: Path) -> None:
    """Operator and build pods are admitted by Pod Security "restricted" (server-side dry run)."""
    from kubernetes import client

    from huskies_agent.k8s.objects import RunSpec, build_job
    from huskies_agent.settings import Settings

    core = client.CoreV1Api(install.api)
    assert core.read_namespace(NS).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    template = client.AppsV1Api(install.api).read_namespaced_deployment(RELEASE, NS).spec.template
    operator_pod = client.V1Pod(metadata=client.V1ObjectMeta(name="psa-operator", labels=template.metadata.labels),
                                spec=template.spec)
    core.create_namespaced_pod(NS, operator_pod, dry_run="All")

    path = tmp_path / "config.yaml"
    path.write_text(core.read_namespaced_config_map(f"{RELEASE}-config", NS).data["config.yaml"])
    settings = Settings.load(path, environ={"POD_NAME": "p", "POD_NAMESPACE": NS})
    job = build_job(settings, RunSpec("PSA-1", "2_current", "node", 1), None)
    template_meta = job["spec"]["template"]["metadata"]
    build_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-build", **template_meta},
                 "spec": job["spec"]["template"]["spec"]}
    core.create_namespaced_pod(NS, build_pod, dry_run="All")

    insecure = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-control"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(client.ApiException) as exc:  # control: the namespace really enforces it
        core.create_namespaced_pod(NS, insecure, dry_run="All")
    assert exc.value.status == 403 and "restricted" in str(exc.value.body)


# ------------------------------------------------------------------------------------------ RBAC: reviews


def _review(api: Any, user: str, groups: list[str], verb: str, resource: str, *, group: str = "",
            subresource: str = "", name: str = "", namespace: str | None = NS) -> bool:
    from kubernetes import client

    attrs = client.V1ResourceAttributes(
        verb=verb, group=group, resource=resource, subresource=subresource or None, name=name or None,
        namespace=namespace)
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user=user, groups=groups, resource_attributes=attrs))
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


#: (verb, group, resource, subresource, name) the operator needs in its namespace
NEEDED = (
    [(v, "huskies.dev", "storyjobs", "", "") for v in ("get", "list", "watch", "create", "patch", "delete")]
    + [(v, "huskies.dev", "storyjobs", "status", "") for v in ("get", "patch")]
    + [(v, "batch", "jobs", "", "") for v in ("get", "list", "watch", "create", "delete")]
    + [(v, "", "pods", "", "") for v in ("get", "list", "watch", "delete", "deletecollection")]
    + [(v, "", "events", "", "") for v in ("create", "list", "watch")]
    + [("create", "coordination.k8s.io", "leases", "", "")]
    + [(v, "coordination.k8s.io", "leases", "", f"{RELEASE}-leader") for v in ("get", "update")]
    + [("create", "", "configmaps", "", "")]
    + [("get", "", "configmaps", "", f"{RELEASE}-identity")]
)

#: (verb, group, resource, subresource, name, namespace) it must not be able to do
FORBIDDEN = (
    [(v, "", "secrets", "", "", NS) for v in ("get", "list", "watch", "create", "update", "delete")]
    + [("get", "", "secrets", "", "huskies-rendezvous", NS), ("list", "", "secrets", "", "", OTHER_NS),
       ("list", "", "secrets", "", "", None)]
    + [(v, "", "nodes", "", "", None) for v in ("get", "list", "watch", "patch")]
    + [("list", "", "namespaces", "", "", None), ("get", "", "namespaces", "", NS, None)]
    + [(v, "huskies.dev", "storyjobs", "", "", OTHER_NS) for v in ("get", "list", "watch", "create", "delete")]
    + [(v, "batch", "jobs", "", "", OTHER_NS) for v in ("list", "create", "delete")]
    + [(v, "", "pods", "", "", OTHER_NS) for v in ("list", "delete", "deletecollection")]
    + [(v, "", "events", "", "", OTHER_NS) for v in ("create", "list", "watch")]
    + [("list", "", "events", "", "", None), ("get", "", "events", "", "", NS)]
    + [("create", "coordination.k8s.io", "leases", "", "", OTHER_NS),
       ("create", "", "configmaps", "", "", OTHER_NS)]
    + [(v, "huskies.dev", "storyjobs", "", "", NS) for v in ("update", "deletecollection")]
    + [("update", "huskies.dev", "storyjobs", "status", "", NS), ("patch", "", "events", "", "", NS)]
    + [(v, "batch", "jobs", "", "", NS) for v in ("update", "patch", "deletecollection")]
    + [(v, "", "pods", "", "", NS) for v in ("create", "update", "patch")]
    + [("create", "", "pods", "exec", "", NS), ("get", "", "pods", "log", "", NS),
       ("create", "", "pods", "eviction", "", NS)]
    + [(v, "", "configmaps", "", "", NS) for v in ("list", "watch", "get")]
    + [("get", "", "configmaps", "", f"{RELEASE}-config", NS),
       ("update", "", "configmaps", "", f"{RELEASE}-identity", NS),
       ("delete", "", "configmaps", "", f"{RELEASE}-identity", NS)]
    + [(v, "coordination.k8s.io", "leases", "", "", NS) for v in ("list", "watch", "get")]
    + [("get", "coordination.k8s.io", "leases", "", "someone-elses-leader", NS),
       ("update", "coordination.k8s.io", "leases", "", "someone-elses-leader", NS),
       ("delete", "coordination.k8s.io", "leases", "", f"{RELEASE}-leader", NS)]
    + [("create", "", "serviceaccounts", "token", SA, NS), ("create", "rbac.authorization.k8s.io", "roles", "", "", NS),
       ("create", "rbac.authorization.k8s.io", "rolebindings", "", "", NS),
       ("patch", "apps", "deployments", "", RELEASE, NS),
       ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", "", None),
       ("get", "apiextensions.k8s.io", "customresourcedefinitions", "", "storyjobs.huskies.dev", None)]
)


def test_service_account_can_do_what_the_operator_needs(install: Install) -> None:
    denied = [
        (verb, group, resource, sub, name)
        for verb, group, resource, sub, name in NEEDED
        if not _review(install.api, SA_USER, SA_GROUPS, verb, resource, group=group, subresource=sub, name=name)
    ]
    assert not denied, f"the chart's ServiceAccount lacks: {denied}"


def test_service_account_cannot_do_anything_else(install: Install) -> None:
    allowed = [
        row for row in FORBIDDEN
        if _review(install.api, SA_USER, SA_GROUPS, row[0], row[2], group=row[1], subresource=row[3],
                   name=row[4], namespace=row[5])
    ]
    assert not allowed, f"the chart's ServiceAccount may do too much: {allowed}"


def test_build_service_account_has_no_access(install: Install) -> None:
    user = f"system:serviceaccount:{NS}:{BUILD_SA}"
    for verb, group, resource, sub, name in NEEDED:
        assert not _review(install.api, user, SA_GROUPS, verb, resource, group=group, subresource=sub, name=name)
    assert not _review(install.api, user, SA_GROUPS, "get", "secrets", name="huskies-rendezvous")


# ------------------------------------------------------------------------------------------ RBAC: real calls


@pytest.fixture(scope="module")
def sa_kubeconfig(install: Install) -> Path:
    """A kubeconfig with a real TokenRequest token of the chart's ServiceAccount."""
    return Path(install.plane.serviceaccount_kubeconfig(NS, SA, create=False, expiration_seconds=3600))


async def test_operator_api_calls_succeed_as_the_service_account(
    install: Install, sa_kubeconfig: Path, tmp_path: Path
) -> None:
    """The operator's own code (k8s.api.Kube, leadership) works with the chart's RBAC alone."""
    from kubernetes import client as sync_client
    from tests.helpers.kube import TestKube

    from huskies_agent.k8s.api import connect
    from huskies_agent.k8s.objects import RunSpec, build_job, build_storyjob, selector_for_instance
    from huskies_agent.leadership import LeaderElector, ensure_node_id
    from huskies_agent.settings import Settings

    config = sync_client.CoreV1Api(install.api).read_namespaced_config_map(f"{RELEASE}-config", NS)
    path = tmp_path / "config.yaml"
    path.write_text(config.data["config.yaml"])
    settings = Settings.load(path, environ={"POD_NAME": f"{RELEASE}-replica-a", "POD_NAMESPACE": NS})
    assert settings.namespace == NS and settings.instance == RELEASE

    api = await connect(str(sa_kubeconfig))
    kube = TestKube(api, settings.namespace)
    try:
        # identity ConfigMap: create once, then read
        node_id = await ensure_node_id(kube, settings)
        assert node_id == await ensure_node_id(kube, settings)
        # the Lease: create, renew, refuse a second replica, release
        leader = LeaderElector(kube, settings)
        assert await leader.try_acquire_or_renew()
        assert await leader.try_acquire_or_renew()
        standby = LeaderElector(kube, dataclasses.replace(settings, replica_id=f"{RELEASE}-replica-b"))
        assert not await standby.try_acquire_or_renew()
        leader.is_leader = True
        await leader.release()

        # a story: StoryJob, its status, its Job, pods, an Event, and the clean-up
        run = RunSpec("CHART-1 rbac story", "2_current", node_id, 1)
        storyjob = await kube.create_storyjob(build_storyjob(settings, run))
        assert (await kube.get_storyjob(run.name))["spec"]["storyId"] == run.story_id
        assert [s["metadata"]["name"] for s in await kube.list_storyjobs(selector_for_instance(settings))] == [
            run.name]
        await kube.patch_storyjob_status(run.name, {"phase": "Running", "jobName": run.name})
        job = await kube.create_job(build_job(settings, run, storyjob["metadata"]["uid"]))
        assert (await kube.get_job(run.name))["metadata"]["uid"] == job["metadata"]["uid"]
        assert [j["metadata"]["name"] for j in await kube.list_jobs(selector_for_instance(settings))] == [run.name]
        await kube.list_pods(f"job-name={run.name}")
        # kopf watches Jobs and pods of the namespace
        for path in (f"/apis/batch/v1/namespaces/{NS}/jobs", f"/api/v1/namespaces/{NS}/pods"):
            async for _ in kube.watch(path, {"timeoutSeconds": 1}):
                pass  # a 403 would raise before the first event
        await kube.post_event(storyjob, reason="ChartTest", message="posted with the chart's RBAC")
        events = sync_client.CoreV1Api(install.api).list_namespaced_event(
            NS, field_selector=f"involvedObject.name={run.name},involvedObject.kind=StoryJob").items
        assert [e.reason for e in events] == ["ChartTest"]
        # delete_job swallows pod-deletion errors: call deletecollection directly too
        assert await kube.delete_job(run.name)
        await kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods", params={"labelSelector": f"job-name={run.name}"})
        await kube.delete_storyjob(run.name)
    finally:
        await kube.close()


async def test_forbidden_requests_as_the_service_account(install: Install, sa_kubeconfig: Path) -> None:
    from huskies_agent.k8s.api import ApiException, Kube, connect

    kube = Kube(await connect(str(sa_kubeconfig)), NS)
    attempts = {
        "read secret": f"/api/v1/namespaces/{NS}/secrets/huskies-rendezvous",
        "list secrets": f"/api/v1/namespaces/{NS}/secrets",
        "list secrets everywhere": "/api/v1/secrets",
        "read secret in another namespace": f"/api/v1/namespaces/{OTHER_NS}/secrets/huskies-rendezvous",
        "list nodes": "/api/v1/nodes",
        "list namespaces": "/api/v1/namespaces",
        "list storyjobs in another namespace": f"/apis/huskies.dev/v1alpha1/namespaces/{OTHER_NS}/storyjobs",
        "list pods in another namespace": f"/api/v1/namespaces/{OTHER_NS}/pods",
        "read the chart's config": f"/api/v1/namespaces/{NS}/configmaps/{RELEASE}-config",
        "list configmaps": f"/api/v1/namespaces/{NS}/configmaps",
        "read another lease": f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kube-scheduler",
    }
    try:
        statuses = {}
        for what, path in attempts.items():
            try:
                await kube.request("GET", path)
                statuses[what] = 200
            except ApiException as exc:
                statuses[what] = exc.status
        assert statuses == dict.fromkeys(attempts, 403)
    finally:
        await kube.close()


# ------------------------------------------------------------------------------------------ the real operator


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_operator_process_runs_as_the_service_account(install: Install, sa_kubeconfig: Path, tmp_path: Path) -> None:
    """`huskies-agent operator` with the chart's config file and only the chart's RBAC: it takes
    the Lease, syncs with a real (empty) rendezvous, adopts, starts kopf's namespaced watches and
    serves /healthz, with no 403 anywhere."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    from kubernetes import client

    from huskies_agent_dev.localrun import start_rendezvous

    core = client.CoreV1Api(install.api)
    config = tmp_path / "config.yaml"
    config.write_text(core.read_namespaced_config_map(f"{RELEASE}-config", NS).data["config.yaml"])
    rendezvous, url = start_rendezvous(tmp_path)
    port = _free_port()
    pod_name = f"{RELEASE}-process-test"
    env = {
        **{k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        "POD_NAME": pod_name, "POD_NAMESPACE": NS,
        "HUSKIES_METRICS_HOST": "127.0.0.1", "HUSKIES_METRICS_PORT": str(port),
        "HUSKIES_RENDEZVOUS_URL": url,
    }
    log = tmp_path / "operator.log"
    coordination = client.CoordinationV1Api(install.api)
    # Start from no Lease: one still held by an earlier test's replica would make this new
    # replica wait a full lease term of silence (by its own clock) before taking over.
    try:
        coordination.delete_namespaced_lease(f"{RELEASE}-leader", NS)
    except client.ApiException as exc:
        assert exc.status == 404
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "huskies_agent", "--log-format", "text", "--log-level", "DEBUG",
             "operator", "--config", str(config), "--kubeconfig", str(sa_kubeconfig)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            def up() -> bool:
                assert proc.poll() is None, f"operator exited {proc.returncode}:\n{log.read_text()[-4000:]}"
                text = log.read_text()
                streams = [f"Starting the watch-stream for {r} in '{NS}'" for r in ("jobs.v1.batch", "pods.v1")]
                if not all(s in text for s in streams):
                    return False
                try:
                    lease = coordination.read_namespaced_lease(f"{RELEASE}-leader", NS)
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                        healthy = resp.status == 200
                except Exception:
                    return False
                return healthy and lease.spec.holder_identity == pod_name

            _wait(up, "the operator to lead, watch and serve /healthz", timeout=45)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            rendezvous.stop()
    text = log.read_text()
    denied = [line for line in text.splitlines() if re.search(r"\b403\b|[Ff]orbidden", line)]
    assert not denied, "\n".join(denied[:20])
    # it released the Lease on SIGTERM, so a standby would take over at once
    assert not coordination.read_namespaced_lease(f"{RELEASE}-leader", NS).spec.holder_identity


async def test_operator_completes_a_story_with_only_the_charts_rbac(
    cluster: Any, install: Install, sa_kubeconfig: Path, tmp_path: Path
) -> None:
    """The whole loop under the chart's ServiceAccount: claim, StoryJob, Job, pod, completion.

    Asks for the ``cluster`` tier so Jobs really run (controllers, scheduler, kwok)."""
    import json

    from kubernetes import client
    from tests.e2e.harness import eventually, flush, kube, pipeline

    from huskies_agent_dev.localrun import start_operator, start_rendezvous

    assert install.plane is cluster
    core = client.CoreV1Api(install.api)
    config = tmp_path / "config.yaml"
    config.write_text(core.read_namespaced_config_map(f"{RELEASE}-config", NS).data["config.yaml"])
    try:
        client.CoordinationV1Api(install.api).delete_namespaced_lease(f"{RELEASE}-leader", NS)
    except client.ApiException as exc:
        assert exc.status == 404
    rendezvous, url = start_rendezvous(tmp_path)
    operator, _ = start_operator(
        "chart-rbac", kubeconfig=str(sa_kubeconfig), namespace=NS, rendezvous=url, log_dir=tmp_path,
        env={"HUSKIES_CONFIG": str(config), "POD_NAME": f"{RELEASE}-story-test", "POD_NAMESPACE": NS,
             "HUSKIES_INSTANCE": RELEASE, "HUSKIES_REPLICA_ID": f"{RELEASE}-story-test",
             "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "500ms"})})
    try:
        async with pipeline(url) as doc, kube(str(install.kubeconfig), NS) as k:
            doc.add_story("901_rbac_story", stage="2_current")
            await flush(doc)
            await eventually(lambda: doc.story("901_rbac_story").stage != "2_current", 90,
                             what="the story to leave 2_current")
            sjs = [sj for sj in await k.list_storyjobs("") if sj["spec"]["storyId"] == "901_rbac_story"]
            first = next(sj for sj in sjs if sj["spec"]["stage"] == "2_current")
            assert first["status"]["phase"] == "Succeeded"
    finally:
        operator.stop()
        rendezvous.stop()
    log = operator.log()
    denied = [line for line in log.splitlines() if " 403 " in line or "Forbidden" in line]
    assert not denied, "\n".join(denied[:20])
