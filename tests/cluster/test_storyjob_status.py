"""The StoryJob CRD against a real kube-apiserver: the spec is immutable (CEL), and the engine's own
status code path (lifecycle) writes conditions in the shape ``kubectl wait --for=condition=`` reads,
with observedGeneration and the printer columns on-call looks at."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from huskies_agent.engine import conditions, lifecycle
from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import Finished, decide, status_fields
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.runs import Run
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import Kube, connect
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.settings import Settings

CRD_PATH = Path(__file__).resolve().parents[2] / "operator" / "huskies_agent" / "crds" / "storyjobs.yaml"
GROUP, VERSION, PLURAL = "huskies.dev", "v1alpha1", "storyjobs"
TABLE_ACCEPT = "application/json;as=Table;g=meta.k8s.io;v=v1"


@pytest.fixture
def admin(kube_env: Any) -> Iterator[Any]:
    api = config.new_client_from_config(config_file=str(kube_env.kubeconfig), persist_config=False)
    manifest = yaml.safe_load(CRD_PATH.read_text())
    ext = client.ApiextensionsV1Api(api)
    ext.patch_custom_resource_definition(manifest["metadata"]["name"], manifest, field_manager="huskies-status-test",
                                         force=True, _content_type="application/apply-patch+yaml")
    deadline = time.monotonic() + 30
    while True:
        crd = api.sanitize_for_serialization(ext.read_custom_resource_definition(manifest["metadata"]["name"]))
        # Established, and this version of the schema served (the CEL rule is part of it).
        served = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        established = any(c["type"] == "Established" and c["status"] == "True"
                          for c in (crd.get("status") or {}).get("conditions") or [])
        if served.get("x-kubernetes-validations") and established:
            break
        assert time.monotonic() < deadline, "StoryJob CRD not established"
        time.sleep(0.2)
    yield api
    api.close()


@pytest.fixture
def namespace(kube_env: Any, admin: Any) -> str:
    name = f"status-{uuid.uuid4().hex[:8]}"
    kube_env.control_plane.create_namespace(name)
    return name


@pytest.fixture
async def ctx(admin: Any, namespace: str) -> AsyncIterator[Context]:
    kube = Kube(await connect(), namespace)
    try:
        yield Context(settings=Settings(namespace=namespace), kube=kube, doc=PipelineDoc(),
                      sync=None,  # type: ignore[arg-type]  # no document writes in these tests
                      me="node-a", metrics=Metrics())
    finally:
        await kube.close()


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def kubectl_wait_satisfied(obj: dict[str, Any], condition: str) -> bool:
    """What ``kubectl wait --for=condition=NAME`` checks: an entry of ``.status.conditions`` with that
    type whose status is "True" (and, when both are set, observedGeneration not behind the object's)."""
    generation = obj["metadata"].get("generation")
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == condition:
            fresh = generation is None or cond.get("observedGeneration", generation) >= generation
            return bool(cond.get("status") == "True" and fresh)
    return False


def test_the_spec_cannot_be_edited(admin: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(admin)
    spec = objects.RunSpec("7_immutable", "2_current", "node-a", 3)
    body = objects.build_storyjob(Settings(namespace=namespace), spec)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    for change in ({"epoch": 4}, {"stage": "3_qa"}, {"branch": "elsewhere"}):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec.name, {"spec": change})
        assert err.value.status == 422, err.value.body
        assert "spec is immutable" in json.loads(err.value.body)["message"]
    # Labels and the status stay writable: only the spec is fixed.
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec.name,
                                       {"metadata": {"labels": {"extra": "yes"}}})
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, spec.name,
                                              {"status": {"phase": "Pending"}})
    got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec.name)
    assert got["spec"]["epoch"] == 3 and got["metadata"]["labels"]["extra"] == "yes"
    assert got["metadata"]["generation"] == 1


async def test_engine_status_writes_give_kubectl_wait_its_conditions(admin: Any, ctx: Context,
                                                                     namespace: str) -> None:
    api = client.CustomObjectsApi(admin)
    spec = objects.RunSpec("8_wait", "2_current", "node-a", 1)
    created = await ctx.kube.create_storyjob(objects.build_storyjob(ctx.settings, spec))
    run = Run(spec=spec, started=0.0, storyjob=created, job_created=True)

    def read() -> dict[str, Any]:
        obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec.name)
        return obj

    await lifecycle.patch_run_status(ctx, run, {"phase": Phase.PENDING.value, "jobName": spec.name,
                                                "jobCreated": True, "startedAt": lifecycle.iso(ctx.clock())})
    obj = read()
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert kubectl_wait_satisfied(obj, "Claimed") and not kubectl_wait_satisfied(obj, "Succeeded")
    assert by_type(obj["status"])["Succeeded"]["status"] == "Unknown"

    unschedulable = {"metadata": {"name": "p"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}}
    found = conditions.pod_scheduled(unschedulable)
    assert found is not None
    await lifecycle.note_condition(ctx, run, found)
    scheduled = by_type(read()["status"])["PodScheduled"]
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == (
        "False", "Unschedulable", "0/3 nodes are available")

    outcome = decide(Finished(succeeded=True, exit_code=0, result={"commit": "c0ffee", "pushed": True,
                                                                     "cost_usd": 1.25}))
    await lifecycle.patch_run_status(ctx, run, {**status_fields(outcome), "finishedAt": lifecycle.iso(ctx.clock())})
    obj = read()
    assert kubectl_wait_satisfied(obj, "Succeeded") and not kubectl_wait_satisfied(obj, "Recorded")
    await lifecycle.patch_status(ctx, spec.name, {"recorded": True, "reason": "advanced to 3_qa"})
    obj = read()
    assert kubectl_wait_satisfied(obj, "Recorded")

    conds = obj["status"]["conditions"]
    assert [c["type"] for c in conds] == ["Claimed", "PodScheduled", "Succeeded", "Recorded"]
    for cond in conds:  # the metav1.Condition shape, as the API server stored it
        assert set(cond) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
        assert cond["observedGeneration"] == 1 and cond["lastTransitionTime"].endswith("Z")

    # The printer columns: default and wide (priority 1), as kubectl get / -o wide show them.
    method, url, headers, body, _ = admin.param_serialize(
        "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", header_params={"Accept": TABLE_ACCEPT},
        auth_settings=["BearerToken"])
    resp = admin.call_api(method, url, header_params=headers, body=body)
    resp.read()
    table = json.loads(resp.data)
    names = [c["name"] for c in table["columnDefinitions"]]
    default = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
    assert default == ["Name", "Story", "Stage", "Phase", "Reason", "Started", "Age"]
    assert [n for n in names if n not in default] == ["Node", "Epoch", "Job", "Commit", "Cost"]
    (row,) = table["rows"]
    cells = dict(zip(names, row["cells"], strict=True))
    assert (cells["Story"], cells["Phase"], cells["Reason"]) == ("8_wait", "Succeeded", "advanced to 3_qa")
    assert (cells["Node"], cells["Job"], cells["Commit"], cells["Cost"]) == ("node-a", spec.name, "c0ffee", 1.25)
    assert cells["Started"]
