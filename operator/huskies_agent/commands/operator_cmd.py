"""``huskies-agent operator``: run this install as one build node of the pipeline.

Every replica serves probes and metrics and campaigns for the Lease; the holder syncs
the pipeline, claims work and runs it. kopf runs standalone (no kopf peering).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

log = logging.getLogger("huskies_agent.operator")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="settings file (YAML); env HUSKIES_CONFIG")
    parser.add_argument("--rendezvous", help="rendezvous URL (overrides HUSKIES_RENDEZVOUS_URL)")
    parser.add_argument("--namespace", help="namespace for StoryJobs and Jobs (overrides settings)")
    parser.add_argument("--kubeconfig",
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from huskies_agent.settings import Settings, SettingsError

    if args.kubeconfig:
        # Wins over in-cluster credentials for kopf's login and the API client alike (k8s/credentials.py).
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        settings = Settings.load(args.config)
        overrides: dict[str, Any] = {}
        if args.rendezvous:
            overrides["rendezvous_url"] = args.rendezvous
        if args.namespace:
            overrides["namespace"] = args.namespace
        if overrides:
            settings = dataclasses.replace(settings, **overrides)
            settings.validate()
        settings.require_rendezvous()
        check_build_pod(settings)
    except SettingsError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    return asyncio.run(operate(settings))


def check_build_pod(settings: Any) -> None:
    """Refuse at start a build pod the patches broke (SettingsError naming every problem)."""
    from huskies_agent.k8s.objects import build_pod_problems
    from huskies_agent.settings import SettingsError

    problems = build_pod_problems(settings)
    if problems:
        raise SettingsError("the build pod is not usable:\n  - " + "\n  - ".join(problems))


async def operate(settings: Any) -> int:
    import kopf

    from huskies_agent import health
    from huskies_agent.backoff import retry_forever
    from huskies_agent.engine import Engine
    from huskies_agent.handlers import EngineSlot, build_registry
    from huskies_agent.k8s.api import Kube, connect
    from huskies_agent.leadership import LeaderElector, ensure_node_id
    from huskies_agent.metrics import Metrics
    from huskies_agent.pipeline.document import PipelineDoc
    from huskies_agent.sync.client import RendezvousClient
    from huskies_agent.sync.stats import export_sync_metrics

    log.info("starting", extra={"settings": settings.public_dict()})
    metrics = Metrics()
    metrics.max_concurrent.set(settings.max_concurrent)
    api = await connect()
    kube = Kube(api, settings.namespace, on_error=metrics.api_error)
    node_id = await retry_forever(lambda: ensure_node_id(kube, settings), "read the node identity")
    log.info("node id %s, replica %s, namespace %s", node_id, settings.replica_id, settings.namespace)

    slot = EngineSlot()
    elector = LeaderElector(kube, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    def ready() -> bool:
        return not elector.is_leader or (slot.engine is not None and slot.engine.active)

    http = await health.serve(settings.metrics_host, settings.metrics_port, metrics, ready)

    async def lead() -> None:
        await elector.wait_leader()
        metrics.lead()  # standbys export no rendezvous connection sample (docs/install.md, alerts)
        doc = PipelineDoc(limits=settings.parse_limits)
        client = RendezvousClient(
            doc, settings.rendezvous_url, token=settings.rendezvous_token, max_size=settings.ws_max_size,
            reconnect_min=settings.reconnect_min_seconds, reconnect_max=settings.reconnect_max_seconds,
        )
        client.on_state(lambda connected: metrics.connected.set(1 if connected else 0))
        export_sync_metrics(metrics, client.stats, lambda: client.synced, lambda: len(doc.encode_update()),
                            bytes_max_age=60.0)
        engine = Engine(settings, kube, doc, client, node_id, metrics, pods=kube)
        async with client:
            slot.engine = engine
            engine_created.set()
            try:
                await engine.run()
            finally:
                slot.engine = None

    engine_created = asyncio.Event()
    kopf_started = False

    async def watch() -> None:
        # kopf's watches feed only the leader's engine, so they start once it is active:
        # a standby keeps no watches open, and the first listing of every pod and Job does
        # not compete with the initial document sync. The listing then replays existing
        # Jobs to the engine, which catches up on anything that changed meanwhile.
        nonlocal kopf_started
        await engine_created.wait()
        assert slot.engine is not None
        await slot.engine.activated.wait()
        kopf_started = True
        await kopf.operator(registry=registry, standalone=True, namespaces=[settings.namespace],
                            clusterwide=False, stop_flag=stop)

    registry = build_registry(settings, slot)
    exit_code = 0
    tasks = {
        asyncio.create_task(elector.run(), name="lease"),
        asyncio.create_task(lead(), name="engine"),
        asyncio.create_task(watch(), name="kopf"),
        asyncio.create_task(stop.wait(), name="signal"),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finished = {task.get_name(): task for task in done}
        kopf_task = finished.get("kopf")
        if stop.is_set() or (kopf_task is not None and kopf_task.exception() is None):
            # A signal (ours or kopf's own handler): a clean shutdown, whatever else ended with it.
            log.info("stopping on signal")
        elif "lease" in finished:
            log.error("leadership lost; exiting so this replica restarts as a standby")
            exit_code = 1
        else:
            for name, task in finished.items():
                log.error("%s stopped unexpectedly", name, exc_info=task.exception())
            exit_code = 1
    finally:
        stop.set()
        for task in tasks:
            if task.get_name() != "kopf" or not kopf_started:  # a running kopf stops by its stop flag
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
        await elector.release()
        await http.cleanup()
        await kube.close()
    return exit_code

