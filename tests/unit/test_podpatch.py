"""The pure patch functions over a pod spec: strategic merge and RFC 6902, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from huskies_agent.k8s.podpatch import PatchError, json_patch, strategic_merge

SPEC: dict[str, Any] = {
    "restartPolicy": "Never",
    "initContainers": [{"name": "clone", "image": "runner", "env": [{"name": "A", "value": "1"}]}],
    "containers": [
        {"name": "agent", "image": "runner", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
         "volumeMounts": [{"name": "work", "mountPath": "/work"}], "args": ["agent", "--x=1"],
         "securityContext": {"runAsUser": 10001, "capabilities": {"drop": ["ALL"]}}},
        {"name": "publish", "image": "runner"},
    ],
    "volumes": [{"name": "work", "emptyDir": {}}],
    "tolerations": [{"key": "a", "operator": "Exists"}],
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
}


def agent(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == "agent")


MERGES: list[tuple[str, dict[str, Any], Any]] = [
    # (what, patch, check(result) -> the expected value)
    ("scalar added", {"runtimeClassName": "gvisor"}, lambda r: r["runtimeClassName"] == "gvisor"),
    ("null deletes a key", {"tolerations": None}, lambda r: "tolerations" not in r),
    ("maps merge", {"securityContext": {"seLinuxOptions": {"level": "s0:c1"}}},
     lambda r: r["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                        "seLinuxOptions": {"level": "s0:c1"}}),
    ("nested map merges", {"containers": [{"name": "agent", "securityContext": {"runAsUser": 1000650001}}]},
     lambda r: agent(r)["securityContext"] == {"runAsUser": 1000650001, "capabilities": {"drop": ["ALL"]}}),
    ("env merged by name: changed and appended",
     {"containers": [{"name": "agent", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]},
     lambda r: agent(r)["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                                   {"name": "C", "value": "4"}]),
    ("env item deleted", {"containers": [{"name": "agent", "env": [{"name": "A", "$patch": "delete"}]}]},
     lambda r: agent(r)["env"] == [{"name": "B", "value": "2"}]),
    ("envFrom is replaced (no merge key), here added",
     {"containers": [{"name": "agent", "envFrom": [{"configMapRef": {"name": "tools"}}]}]},
     lambda r: agent(r)["envFrom"] == [{"configMapRef": {"name": "tools"}}]),
    ("volumeMounts merged by mountPath",
     {"containers": [{"name": "agent", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}]},
     lambda r: [m["mountPath"] for m in agent(r)["volumeMounts"]] == ["/work", "/cache"]),
    ("volumes merged by name", {"volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}]},
     lambda r: [v["name"] for v in r["volumes"]] == ["work", "cache"]),
    ("new init container appended after the existing",
     {"initContainers": [{"name": "db", "image": "postgres", "restartPolicy": "Always"}]},
     lambda r: [c["name"] for c in r["initContainers"]] == ["clone", "db"]),
    ("other lists are replaced", {"tolerations": [{"key": "b", "operator": "Exists"}]},
     lambda r: r["tolerations"] == [{"key": "b", "operator": "Exists"}]),
    ("container args replaced whole", {"containers": [{"name": "agent", "args": ["x"]}]},
     lambda r: agent(r)["args"] == ["x"]),
    ("$patch: replace on a map", {"securityContext": {"$patch": "replace", "runAsNonRoot": True}},
     lambda r: r["securityContext"] == {"runAsNonRoot": True}),
    ("$patch: replace as a list item", {"volumes": [{"$patch": "replace"}, {"name": "only", "emptyDir": {}}]},
     lambda r: r["volumes"] == [{"name": "only", "emptyDir": {}}]),
    ("$patch: delete on a map", {"securityContext": {"$patch": "delete"}}, lambda r: "securityContext" not in r),
    ("a container deleted", {"containers": [{"name": "publish", "$patch": "delete"}]},
     lambda r: [c["name"] for c in r["containers"]] == ["agent"]),
    ("empty patch changes nothing", {}, lambda r: r == SPEC),
]


@pytest.mark.parametrize(("what", "patch", "check"), MERGES, ids=[m[0] for m in MERGES])
def test_strategic_merge(what: str, patch: dict[str, Any], check: Any) -> None:
    before = repr(SPEC)
    result = strategic_merge(SPEC, patch)
    assert check(result), result
    assert repr(SPEC) == before  # pure: the input is not changed


MERGE_ERRORS = [
    ("list item without its key", {"containers": [{"image": "x"}]}, "containers[0]: needs 'name'"),
    ("list item not a map", {"volumes": ["cache"]}, "volumes[0]: expected a mapping"),
    ("unknown directive", {"containers": [{"name": "agent", "$retainKeys": ["env"]}]}, "unsupported directive"),
    ("unknown $patch value", {"securityContext": {"$patch": "merge-please"}}, "unsupported directive"),
    ("delete of a missing item", {"volumes": [{"name": "nope", "$patch": "delete"}]}, "not there"),
    ("directive inside a new value", {"dnsConfig": {"$patch": "delete"}}, "not in the pod spec"),
]


@pytest.mark.parametrize(("what", "patch", "message"), MERGE_ERRORS, ids=[m[0] for m in MERGE_ERRORS])
def test_strategic_merge_errors_name_the_place(what: str, patch: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError, match=message.replace("[", r"\[").replace("$", r"\$")):
        strategic_merge(SPEC, patch)


JSON_PATCHES: list[tuple[str, list[dict[str, Any]], Any]] = [
    ("add to a map", [{"op": "add", "path": "/runtimeClassName", "value": "gvisor"}],
     lambda r: r["runtimeClassName"] == "gvisor"),
    ("insert before the first init container",
     [{"op": "add", "path": "/initContainers/0", "value": {"name": "setup", "image": "busybox"}}],
     lambda r: [c["name"] for c in r["initContainers"]] == ["setup", "clone"]),
    ("append with -", [{"op": "add", "path": "/volumes/-", "value": {"name": "v", "emptyDir": {}}}],
     lambda r: [v["name"] for v in r["volumes"]] == ["work", "v"]),
    ("replace", [{"op": "replace", "path": "/containers/0/image", "value": "mine"}],
     lambda r: agent(r)["image"] == "mine"),
    ("remove", [{"op": "remove", "path": "/tolerations"}], lambda r: "tolerations" not in r),
    ("escaped pointer", [{"op": "add", "path": "/nodeSelector", "value": {}},
                         {"op": "add", "path": "/nodeSelector/huskies.dev~1pool", "value": "build"}],
     lambda r: r["nodeSelector"] == {"huskies.dev/pool": "build"}),
    ("copy", [{"op": "copy", "from": "/containers/0/env", "path": "/initContainers/0/env"}],
     lambda r: r["initContainers"][0]["env"] == agent(r)["env"]),
    ("move", [{"op": "move", "from": "/tolerations", "path": "/savedTolerations"}],
     lambda r: "tolerations" not in r and r["savedTolerations"] == SPEC["tolerations"]),
    ("test that passes", [{"op": "test", "path": "/restartPolicy", "value": "Never"}], lambda r: r == SPEC),
]


@pytest.mark.parametrize(("what", "ops", "check"), JSON_PATCHES, ids=[m[0] for m in JSON_PATCHES])
def test_json_patch(what: str, ops: list[dict[str, Any]], check: Any) -> None:
    before = repr(SPEC)
    result = json_patch(SPEC, ops)
    assert check(result), result
    assert repr(SPEC) == before


JSON_ERRORS = [
    ("unknown op", [{"op": "merge", "path": "/a"}], r"pod_json_patch\[0\]: op must be one of"),
    ("no value", [{"op": "add", "path": "/a"}], "add needs a value"),
    ("bad pointer", [{"op": "add", "path": "a", "value": 1}], "expected a JSON pointer"),
    ("missing parent", [{"op": "add", "path": "/dnsConfig/options/0", "value": {}}], "does not exist"),
    ("index out of range", [{"op": "remove", "path": "/containers/5"}], "out of range"),
    ("not an index", [{"op": "remove", "path": "/containers/agent"}], "not a list index"),
    ("failed test", [{"op": "test", "path": "/restartPolicy", "value": "Always"}], "the value differs"),
    ("unknown member", [{"op": "add", "path": "/a", "value": 1, "vaule": 2}], "unknown member"),
    ("later op names its index", [{"op": "add", "path": "/a", "value": 1}, {"op": "remove", "path": "/b"}],
     r"pod_json_patch\[1\] \(remove /b\)"),
    ("not an operation", ["add /a"], "expected an operation"),
    ("whole document replaced by a list", [{"op": "replace", "path": "", "value": []}], "not a PodSpec"),
]


@pytest.mark.parametrize(("what", "ops", "message"), JSON_ERRORS, ids=[m[0] for m in JSON_ERRORS])
def test_json_patch_errors_name_the_operation(what: str, ops: list[Any], message: str) -> None:
    with pytest.raises(PatchError, match=message):
        json_patch(SPEC, ops)
