"""A story on the real node: the git server and the scripted Messages API its build pods reach,
the chart installed so the operator and its build pods run there, and what the test watches.

``GitServer``       ``git http-backend`` behind HTTP Basic auth (tests/runner/runner_helpers.py) on the
                    host's loopback, serving one bare repository with the stories' files; an ``update``
                    hook records every ref update the server accepts. The node reaches it through a
                    forward, so pods clone ``http://<bridge gateway>:<port>/project.git``.
``install_chart``   ``helm install`` from the registry with the README quickstart's values (images,
                    rendezvous, repo URL, git and Anthropic Secrets) plus what only a test needs (the
                    scripted API's address for the agent, the real node's selector and taint, small
                    requests): see :func:`test_only_values`.
``PodTimeline``     a watch of the namespace's pods: when each was first seen, scheduled, Running, and
                    its last status (container exit codes and termination messages).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.chart.chartlib import Helm
from tests.realrun.node import POD_GATEWAY, TAINT_KEY, RealNode
from tests.realrun.stack import Published, Rendezvous
from tests.runner.runner_helpers import GitHttpServer, git, install_hook, make_story_repo

GIT_USER = "x-access-token"  # the runner's default user name for a token
GIT_TOKEN = "ghp_test_token_for_the_loopback_git_server"
ANTHROPIC_KEY = "sk-ant-test-key-for-the-scripted-server"
GIT_SECRET = "huskies-git"
ANTHROPIC_SECRET = "huskies-anthropic"
REPO = "project.git"
ZERO = "0" * 40


def story_text(story_id: str) -> str:
    return f"# Story {story_id}\n\nAdd a widget.\n\n## Acceptance criteria\n- [ ] the widget exists\n"


def story_path(story_id: str) -> str:
    return f".huskies/work/2_current/{story_id}.md"


def branch_of(story_id: str) -> str:
    return f"feature/story-{story_id}"


class GitServer:
    """The project's git server for the node's pods (use as a context manager)."""

    def __init__(self, root: Path, story_ids: list[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.bare = root / REPO
        self.updates_log = root / "ref-updates.log"
        files = {"README.md": "a project\n", **{story_path(s): story_text(s) for s in story_ids}}
        self.main_sha = make_story_repo(self.bare, files)
        # Every ref update the server accepts, in order: "<ref> <old> <new>".
        install_hook(self.bare, "update",
                     f"open({str(self.updates_log)!r}, 'a').write(' '.join(sys.argv[1:4]) + '\\n')")
        self._http = GitHttpServer(root, GitHttpServer.basic(GIT_USER, GIT_TOKEN))

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def pod_url(self) -> str:
        """The repository's address as the node's pods see it (the forward at the bridge gateway)."""
        return f"http://{POD_GATEWAY}:{self.port}/{REPO}"

    @property
    def requests(self) -> list[tuple[str, str, str]]:
        return list(self._http.requests)

    def __enter__(self) -> GitServer:
        self._http.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.__exit__(*exc)

    # ------------------------------------------------------------------ reading the bare repository
    def branches(self) -> dict[str, str]:
        out = git("--git-dir", str(self.bare), "for-each-ref", "--format=%(refname:short) %(objectname)",
                  "refs/heads/")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def show(self, rev: str) -> str:
        return git("--git-dir", str(self.bare), "show", rev)

    def trailers(self, rev: str) -> dict[str, str]:
        out = git("--git-dir", str(self.bare), "show", "-s", "--format=%(trailers:only,unfold)", rev)
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if k}

    def ref_updates(self, ref: str = "") -> list[tuple[str, str, str]]:
        if not self.updates_log.exists():
            return []
        found = [tuple(line.split()) for line in self.updates_log.read_text().splitlines() if line.strip()]
        return [(r, o, n) for r, o, n in found if not ref or r == ref]  # type: ignore[misc]

    def push_as_node(self, story_id: str, *, epoch: int, node: str, files: Mapping[str, str], work: Path) -> str:
        """Push ``feature/story-<id>`` the way a node's run does (the trailers of docs/runner.md),
        through the server; returns the pushed commit."""
        url = f"http://{GIT_USER}:{GIT_TOKEN}@127.0.0.1:{self.port}/{REPO}"
        git("clone", "-q", url, str(work))
        git("checkout", "-q", "-b", branch_of(story_id), cwd=work)
        for rel, text in files.items():
            (work / rel).write_text(text)
        git("add", "-A", cwd=work)
        message = (f"huskies: coder work on story {story_id}\n\n"
                   f"Huskies-Story: {story_id}\nHuskies-Stage: 2_current\nHuskies-Claim-Epoch: {epoch}\n"
                   f"Huskies-Node: {node}\nHuskies-Outcome: checkpoint\n")
        git("-c", f"user.name={node}", "-c", "user.email=node@example.invalid", "commit", "-q", "-m", message,
            cwd=work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch_of(story_id)}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).strip()


# ---------------------------------------------------------------------- the install
def quickstart_sets(published: Published, rendezvous_url: str, repo_url: str) -> list[str]:
    """The values README.md's quickstart sets, in its order."""
    return [
        f"image.repository={published.operator_repository}",
        f"build.image.repository={published.runner_repository}",
        f"rendezvous.url={rendezvous_url}",
        f"build.repoUrl={repo_url}",
        f"build.git.existingSecret={GIT_SECRET}",
        f"build.anthropic.existingSecret={ANTHROPIC_SECRET}",
    ]


def test_only_values(node: str, model_port: int, extra_build: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What only the test adds: the scripted API for the agent, the real node, small requests."""
    on_node = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    }
    build: dict[str, Any] = {
        **on_node,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "extraEnv": [
            {"name": "ANTHROPIC_BASE_URL", "value": f"http://{POD_GATEWAY}:{model_port}"},
            # One retry of a failed API call instead of ten with backoff: a failure shows in seconds.
            {"name": "CLAUDE_CODE_MAX_RETRIES", "value": "1"},
        ],
        "maxTurns": 20,
        **(extra_build or {}),
    }
    return {"replicaCount": 1, **on_node, "build": build}


@dataclass
class Install:
    helm: Helm
    kubeconfig: Path
    release: str
    namespace: str

    def uninstall(self) -> None:
        self.helm.run("uninstall", self.release, "--namespace", self.namespace, "--wait",
                      kubeconfig=self.kubeconfig, check=False)


def create_secrets(core: Any, namespace: str) -> None:
    from kubernetes import client

    for name, data in ((GIT_SECRET, {"token": GIT_TOKEN}), (ANTHROPIC_SECRET, {"api-key": ANTHROPIC_KEY})):
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
        try:
            core.create_namespaced_secret(namespace, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise


@contextlib.contextmanager
def install_chart(
    helm: Helm, kubeconfig: Path, core: Any, published: Published, *, release: str, namespace: str,
    rendezvous: Rendezvous, git_server: GitServer, model_port: int, node: RealNode,
    workdir: Path, extra_build: Mapping[str, Any] | None = None,
) -> Iterator[Install]:
    """Make the node reach the servers, create the Secrets, ``helm install`` from the registry."""
    from kubernetes import client

    for port in (rendezvous.port, git_server.port, model_port):
        node.forward(port)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    create_secrets(core, namespace)
    values = workdir / f"{release}-test-values.yaml"
    values.write_text(yaml.safe_dump(test_only_values(node.name, model_port, extra_build)))
    argv = ["install", release, published.chart_url, "--version", published.version, "--plain-http",
            "--namespace", namespace, "--wait=false", "-f", str(values)]
    for value in quickstart_sets(published, f"ws://{POD_GATEWAY}:{rendezvous.port}/crdt-sync", git_server.pod_url):
        argv += ["--set", value]
    installed = Install(helm, kubeconfig, release, namespace)
    helm.run(*argv, kubeconfig=kubeconfig)
    try:
        yield installed
    finally:
        installed.uninstall()


def operator_ready(core: Any, namespace: str) -> bool:
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=operator").items
    return len(pods) == 1 and any(c.type == "Ready" and c.status == "True" for c in pods[0].status.conditions or [])


def wait_until(predicate: Any, what: str, timeout: float, explain: Any = None, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain() if explain else ''}")
        time.sleep(interval)


# ---------------------------------------------------------------------- watching pods
@dataclass
class PodRecord:
    name: str
    added: float  # wall clock of the first event seen
    scheduled: float = 0.0
    running: float = 0.0
    deleting: float = 0.0
    gone: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)  # the last pod object seen

    def container(self, name: str) -> dict[str, Any]:
        status = self.last.get("status") or {}
        for c in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
            if c.get("name") == name:
                return dict(c)
        return {}

    def terminated(self, name: str) -> dict[str, Any]:
        return dict((self.container(name).get("state") or {}).get("terminated") or {})


class PodTimeline:
    """A watch of one namespace's pods on a thread (raw JSON, so nothing is lost in a model)."""

    def __init__(self, core: Any, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.pods: dict[str, PodRecord] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pods-{namespace}", daemon=True)

    def __enter__(self) -> PodTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        from kubernetes import watch

        version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 5, "_preload_content": False}
                if version:
                    kwargs["resource_version"] = version
                for event in w.stream(self.core.list_namespaced_pod, self.namespace, **kwargs):
                    raw = event["raw_object"]
                    version = raw.get("metadata", {}).get("resourceVersion", version)
                    self._seen(event["type"], raw)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001  (a watch that expired or broke: list again)
                version = ""
                time.sleep(0.2)
            finally:
                w.stop()

    def _seen(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.time()
        name = pod["metadata"]["name"]
        with self.lock:
            rec = self.pods.get(name)
            if rec is None:
                rec = self.pods[name] = PodRecord(name, now)
            if kind == "DELETED":
                rec.gone = rec.gone or now
            rec.last = pod
            if not rec.scheduled and (pod.get("spec") or {}).get("nodeName"):
                rec.scheduled = now
            if not rec.running and (pod.get("status") or {}).get("phase") == "Running":
                rec.running = now
            if not rec.deleting and pod["metadata"].get("deletionTimestamp"):
                rec.deleting = now

    def of_job(self, job_prefix: str) -> list[PodRecord]:
        with self.lock:
            return [r for r in self.pods.values() if r.name.startswith(job_prefix)]

    def get(self, name: str) -> PodRecord | None:
        with self.lock:
            return self.pods.get(name)


def pod_log_lines(node: RealNode, namespace: str, pod: str, container: str) -> list[tuple[str, str]]:
    """(CRI timestamp, line) of a container's log on the node's disk (kubelet's podLogsDir)."""
    lines: list[tuple[str, str]] = []
    for path in sorted(node.pod_logs.glob(f"{namespace}_{pod}_*/{container}/*.log")):
        for raw in path.read_text(errors="replace").splitlines():
            stamp, _, rest = raw.partition(" ")
            _stream, _, rest = rest.partition(" ")
            _tag, _, text = rest.partition(" ")
            lines.append((stamp, text))
    return lines


def storyjob_table(api_client: Any, namespace: str) -> tuple[list[str], list[list[Any]]]:
    """What ``kubectl get storyjobs -o wide`` prints: the API server's Table of the CRD's columns."""
    url = f"{api_client.configuration.host}/apis/huskies.dev/v1alpha1/namespaces/{namespace}/storyjobs"
    response = api_client.call_api("GET", url, header_params={
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io", **api_client.default_headers})
    response.read()
    table = json.loads(response.data)
    columns = [c["name"] for c in table["columnDefinitions"]]
    return columns, [row["cells"] for row in table.get("rows") or []]


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[c.upper() for c in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)
