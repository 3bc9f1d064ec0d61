"""``huskies-agent demo``: the whole system on this machine, end to end.

Starts a real control plane (etcd, kube-apiserver, controllers, scheduler, kwok fake
nodes), a rendezvous, and the operator; adds a sample story in ``2_current`` and
prints ``kubectl get storyjobs`` as the story becomes a StoryJob, a Job, a pod, and
moves on to ``3_qa``. With ``--keep`` everything stays up until Ctrl-C.

A developer command: the control plane and the local processes come from the development
package ``huskies_agent_dev``, imported lazily inside :func:`run` (the only import of it in the
runtime package; the import-linter contract allows exactly this one). The operator image does not
carry that package, so there ``demo`` exits with a message instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("huskies_agent.demo")

STORY_ID = "1_hello_huskies"
TABLE_ACCEPT = "application/json;as=Table;g=meta.k8s.io;v=v1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    parser.add_argument("--run-dir", help="where logs and the kubeconfig go (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    try:
        import huskies_agent_dev  # noqa: F401  - development package, see the module docstring
    except ModuleNotFoundError:
        print("huskies-agent demo needs the development package huskies_agent_dev: "
              "run it from a source checkout (make venv; make run)", file=sys.stderr)
        return 2
    return asyncio.run(_demo(args))


def _table(admin: Any, namespace: str) -> str:
    status, raw = admin.raw("GET", f"/apis/huskies.dev/v1alpha1/namespaces/{namespace}/storyjobs",
                            accept=TABLE_ACCEPT)
    if status != 200:
        return f"(storyjobs not readable: HTTP {status})"
    table = json.loads(raw)
    cols = [c["name"].upper() for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
    idx = [i for i, c in enumerate(table["columnDefinitions"]) if c.get("priority", 0) == 0]
    rows = [[str(r["cells"][i]) for i in idx] for r in table.get("rows", [])]
    if not rows:
        return "No resources found in namespace " + namespace + "."
    widths = [max(len(x) for x in col) for col in zip(cols, *rows, strict=False)]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
                     for line in [cols, *rows])


async def _demo(args: argparse.Namespace) -> int:
    import yaml

    from huskies_agent.commands.crd_cmd import crd_text
    from huskies_agent.pipeline.document import PipelineDoc
    from huskies_agent.sync.client import RendezvousClient
    from huskies_agent_dev.devcluster import ControlPlane, find_testbin
    from huskies_agent_dev.localrun import FAST, start_operator, start_rendezvous

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="huskies-demo-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    print("==> building/locating the control plane binaries (first run builds them: ~15 min)", flush=True)
    bin_dir = await asyncio.to_thread(find_testbin, build=True)
    plane = ControlPlane(bin_dir, run_dir / "cluster", tier="cluster")
    procs = []
    try:
        print("==> starting etcd, kube-apiserver, controller-manager, scheduler and kwok nodes", flush=True)
        await asyncio.to_thread(plane.start)
        admin = plane.client
        namespace = "huskies-demo"
        await asyncio.to_thread(plane.create_namespace, namespace)
        crd = yaml.safe_load(crd_text())
        await asyncio.to_thread(admin.create_if_missing, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                crd)
        await _wait_crd(admin)
        logs = run_dir / "logs"
        logs.mkdir(exist_ok=True)
        rendezvous, url = start_rendezvous(logs)
        procs.append(rendezvous)
        print(f"==> rendezvous serving the pipeline at {url}", flush=True)
        env = {**FAST, "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "3s"})}
        operator, port = start_operator("demo", kubeconfig=str(plane.kubeconfig_path), namespace=namespace,
                                        rendezvous=url, log_dir=logs, env=env)
        procs.append(operator)
        print(f"==> operator running (metrics: http://127.0.0.1:{port}/metrics, log: {operator.log_path})",
              flush=True)
        print(f"    export KUBECONFIG={plane.kubeconfig_path}", flush=True)

        doc = PipelineDoc()
        async with RendezvousClient(doc, url) as client:
            await client.wait_synced(timeout=30)
            if doc.story(STORY_ID) is None:
                doc.add_story(STORY_ID, stage="2_current", name="Say hello from a build pod")
            await client.confirm(10)
            print(f"==> added story {STORY_ID} in 2_current; watching it move\n", flush=True)
            deadline = float("inf") if args.keep else time.monotonic() + args.timeout
            last = ""
            while time.monotonic() < deadline:
                story = doc.story(STORY_ID)
                stage = story.stage if story else "?"
                holder = (story.claimed_by or "-") if story else "-"
                table = await asyncio.to_thread(_table, admin, namespace)
                view = f"story {STORY_ID}: stage={stage} claimed_by={holder}\n$ kubectl get storyjobs\n{table}\n"
                key = "\n".join(line.rsplit("   ", 1)[0] for line in view.splitlines())  # ignore AGE
                if key != last:
                    print(view, flush=True)
                    last = key
                if story is not None and story.stage == "3_qa" and not args.keep:
                    print("==> the story reached 3_qa: done", flush=True)
                    return 0
                if not operator.alive:
                    print("operator exited unexpectedly:\n" + operator.log()[-4000:], flush=True)
                    return 1
                await asyncio.sleep(0.5)
            print(f"timed out; operator log:\n{operator.log()[-4000:]}", flush=True)
            return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in reversed(procs):
            proc.stop()
        await asyncio.to_thread(plane.stop)


async def _wait_crd(admin: Any) -> None:
    for _ in range(100):
        crd = admin.get_or_none("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/storyjobs.huskies.dev")
        conds = ((crd or {}).get("status") or {}).get("conditions") or []
        established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)
        # Established is not serving yet: a list answers 429 while the storage initializes.
        if established and admin.raw("GET", "/apis/huskies.dev/v1alpha1/storyjobs")[0] == 200:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the StoryJob CRD was not established")
