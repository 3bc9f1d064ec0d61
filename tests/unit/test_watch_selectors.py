"""kopf's watches ask the API server for this install's pods and Jobs only (server-side label
selectors), so another install's objects are never listed, streamed or held here."""

from __future__ import annotations

import kopf
from kopf._cogs.structs import references

from huskies_agent.handlers import EngineSlot, build_registry
from huskies_agent.settings import Settings


def test_watches_select_this_install_on_the_server() -> None:
    registry = build_registry(Settings(namespace="ns", instance="blue"), EngineSlot())
    [startup] = [h for h in registry._activities.get_all_handlers() if h.activity.value == "startup"]
    options = kopf.OperatorSettings()
    startup.fn(settings=options)
    want = ["app.kubernetes.io/instance=blue,app.kubernetes.io/managed-by=huskies-agent"]
    for group, plural, kind in (("batch", "jobs", "Job"), ("", "pods", "Pod")):
        resource = references.Resource(group=group, version="v1", plural=plural, kind=kind, namespaced=True)
        assert list(options.watching.label_selectors.collect(resource)) == want
    other = references.Resource(group="", version="v1", plural="configmaps", kind="ConfigMap", namespaced=True)
    assert list(options.watching.label_selectors.collect(other)) == []
