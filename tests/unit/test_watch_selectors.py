"""kopf's watches ask the API server for this install's pods and Jobs only (server-side label
selectors), so another install's objects are never listed, streamed or held here."""

from __future__ import annotations

import kopf
from kopf._cogs.structs import references

from huskies_agent.handlers import EngineSlot, EventsOnly, build_registry
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


def test_kopf_keeps_no_diff_base_for_event_handlers() -> None:
    registry = build_registry(Settings(namespace="ns"), EngineSlot())
    [startup] = [h for h in registry._activities.get_all_handlers() if h.activity.value == "startup"]
    options = kopf.OperatorSettings()
    startup.fn(settings=options)
    storage = options.persistence.diffbase_storage
    assert isinstance(storage, EventsOnly)
    body = kopf.Body({"metadata": {"name": "j", "labels": {"a": "b"}}, "spec": {"x": [1, 2]}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_kopf_object_lines_drop_its_settings_and_its_per_event_info() -> None:
    import json
    import logging

    from huskies_agent.logs import JsonFormatter, setup_logging

    record = logging.LogRecord("kopf.objects", logging.WARNING, "x", 1, "Handler failed", None, None)
    record.settings = kopf.OperatorSettings()
    record.k8s_ref = {"name": "j"}
    line = json.loads(JsonFormatter().format(record))
    assert "settings" not in line and line["k8s_ref"] == "{'name': 'j'}"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("INFO", "json")
    try:
        assert logging.getLogger("kopf.objects").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:], root.level = handlers, level
        for name in ("kopf.objects", "websockets", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.NOTSET)
