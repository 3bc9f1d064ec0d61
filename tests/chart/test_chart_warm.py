"""Warm build slots in the chart: the placeholders' PriorityClass, the one extra RBAC verb, the
settings the operator gets, and the values that cannot work."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import Helm, find, kinds, rendered_config

from huskies_agent.settings import Settings

URL = "ws://rendezvous.example:3001/crdt-sync"


def _pod_verbs(docs: list[dict[str, Any]]) -> set[str]:
    role = find(docs, "Role")
    return {v for rule in role["rules"] if "pods" in rule.get("resources", []) for v in rule["verbs"]}


def test_default_install_has_no_warm_slots_no_priorityclass_and_creates_no_pods(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}"])
    assert "PriorityClass" not in kinds(docs)
    assert "create" not in _pod_verbs(docs)
    build = rendered_config(docs)["build"]
    assert (build["warm_slots"], build["warm_priority_class_name"], build["can_scale"]) == (0, "", True)


def test_warm_slots_get_a_negative_non_preempting_priorityclass_and_pod_create(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "build.warm.slots=3"], release="r", namespace="ns")
    pc = find(docs, "PriorityClass")
    assert pc["metadata"]["name"] == "ns-r-huskies-agent-warm"
    assert pc["value"] == -1 and pc["preemptionPolicy"] == "Never" and pc["globalDefault"] is False
    assert "namespace" not in pc["metadata"]  # cluster-scoped
    assert "create" in _pod_verbs(docs)
    config = rendered_config(docs)
    build = config["build"]
    assert build["warm_slots"] == 3 and build["warm_priority_class_name"] == "ns-r-huskies-agent-warm"
    assert build["warm_command"] == ["sleep", "infinity"] and build["warm_image"] == ""


def test_rendered_warm_settings_load(helm: Helm, tmp_path: Any) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "build.warm.slots=2", "build.canScale=false",
                             "build.warm.priorityClass.value=-7", "build.priorityClassName=builds"])
    path = tmp_path / "config.yaml"
    path.write_text(find(docs, "ConfigMap", "huskies-agent-config")["data"]["config.yaml"])
    settings = Settings.load(path, environ={})
    assert settings.build.warm_slots == 2 and settings.build.can_scale is False
    assert settings.build.warm_priority_class_name == "huskies-agent-huskies-agent-warm"
    assert find(docs, "PriorityClass")["value"] == -7


def test_an_existing_priorityclass_is_used_and_none_is_created(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "build.warm.slots=1", "build.warm.priorityClass.name=mine"])
    assert "PriorityClass" not in kinds(docs)
    assert rendered_config(docs)["build"]["warm_priority_class_name"] == "mine"


@pytest.mark.parametrize(("sets", "named"), [
    (["build.warm.slots=-1"], "build.warm.slots"),
    (["build.warm.slots=1", "build.warm.priorityClass.create=false"], "build.warm.slots"),
    (["build.warm.slots=1", "build.warm.priorityClass.name=b", "build.priorityClassName=b"],
     "build.warm.priorityClass.name"),
    (["build.warm.priorityClass.value=0"], "build.warm.priorityClass.value"),
    (["build.warm.command={}"], "build.warm.command"),
    (["build.canScale=maybe"], "build.canScale"),
])
def test_bad_warm_values_fail_naming_the_value(helm: Helm, sets: list[str], named: str) -> None:
    proc = helm.run(*helm.template_args(sets=[f"rendezvous.url={URL}", *sets]), check=False)
    assert proc.returncode != 0, f"helm template accepted {sets}"
    pattern = rf"({re.escape(named)}|{re.escape('/' + named.replace('.', '/'))})"  # dotted or a JSON pointer
    assert re.search(pattern, proc.stderr), proc.stderr


@pytest.mark.parametrize("version", ["1.29.0", "1.34.0"])
def test_placeholder_from_rendered_full_settings_validates(helm: Helm, tmp_path: Any, version: str) -> None:
    """The placeholder pod built from the chart's config (ci/full-values.yaml) is a valid v1 Pod, and
    the PriorityClass a valid scheduling.k8s.io/v1 object."""
    import kubernetes_validate
    from tests.chart.chartlib import CI_VALUES

    from huskies_agent.k8s.warmpod import build_placeholder

    docs = helm.render(values=[CI_VALUES / "full-values.yaml"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered_config(docs)))
    settings = Settings.load(path, environ={})
    pod = build_placeholder(settings, "eu-west-1-builders")
    pod["metadata"]["name"] = pod["metadata"].pop("generateName") + "x"  # what the API server does
    kubernetes_validate.validate(pod, version, strict=True)
    kubernetes_validate.validate(find(docs, "PriorityClass"), version, strict=True)
    assert pod["spec"]["containers"][0]["command"] == ["/pause"]
    assert settings.build.can_scale is False and settings.build.warm_slots == 2
