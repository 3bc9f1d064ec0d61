"""One credential resolution for the API client and kopf's login (issue: an operator started with
--kubeconfig for another cluster watched its own cluster through kopf and wrote to the other)."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from huskies_agent.handlers import EngineSlot, build_registry
from huskies_agent.k8s import credentials
from huskies_agent.k8s.api import Kube, connect, ssl_context
from huskies_agent.k8s.credentials import CredentialsError, Source, choose_source, resolve, to_kopf
from huskies_agent.settings import Settings
from huskies_agent_dev.devcluster.pki import create_pki


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "elsewhere"}}],
    }))
    return path


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    """A ServiceAccount mount as kubelet makes it (token, namespace, ca.crt)."""
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text("in-cluster-token\n")
    (d / "namespace").write_text("own-ns")
    (d / "ca.crt").write_text("")
    return d


IN_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.mark.parametrize(
    ("explicit", "env_kubeconfig", "in_pod", "home_config", "expected"),
    [
        ("x.yaml", "env.yaml", True, True, Source.EXPLICIT),
        (None, "env.yaml", True, True, Source.KUBECONFIG_ENV),
        (None, "", True, True, Source.IN_CLUSTER),
        (None, "", False, True, Source.HOME),
        (None, ":env.yaml", False, False, Source.KUBECONFIG_ENV),  # first non-empty path
    ],
)
def test_source_order(tmp_path: Path, sa_dir: Path, explicit: str | None, env_kubeconfig: str, in_pod: bool,
                      home_config: bool, expected: Source) -> None:
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("")
    environ = {"KUBECONFIG": env_kubeconfig, **(IN_POD if in_pod else {})}
    source, _ = choose_source(explicit, environ, sa_dir, tmp_path)
    assert source is expected


def test_no_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no Kubernetes credentials"):
        choose_source(None, {}, tmp_path / "nothing", tmp_path)


def test_a_service_account_without_the_service_host_is_not_in_cluster(tmp_path: Path, sa_dir: Path) -> None:
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("")
    assert choose_source(None, {}, sa_dir, tmp_path)[0] is Source.HOME


def _login_handler(settings: Settings) -> Any:
    registry = build_registry(settings, EngineSlot())
    [handler] = [h for h in registry._activities.get_all_handlers()
                 if h.activity.value == "authentication"]
    return handler.fn


@pytest.fixture
async def two_clusters() -> AsyncIterator[tuple[str, str, list[str]]]:
    """Two API servers that answer who they are: ``own`` (the pod's cluster) and ``other``."""
    seen: list[str] = []
    runners = []
    urls = []
    for name in ("own", "other"):
        async def answer(request: web.Request, name: str = name) -> web.Response:
            seen.append(f"{name} {request.headers.get('Authorization', '')}")
            return web.json_response({"kind": "ConfigMap", "metadata": {"name": name}})
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        yield urls[0], urls[1], seen
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_explicit_kubeconfig_wins_over_in_cluster_for_kopf_and_the_client(
    tmp_path: Path, sa_dir: Path, two_clusters: tuple[str, str, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    own, other, seen = two_clusters
    kubeconfig = write_kubeconfig(tmp_path / "other.kubeconfig", other, {"token": "other-token"})
    # In a pod with a ServiceAccount, started with --kubeconfig (the operator command exports it).
    monkeypatch.setattr(credentials, "SA_DIR", sa_dir)
    host, port = own.removeprefix("http://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    info = _login_handler(dataclasses.replace(Settings(), namespace="ns"))()  # what kopf watches with
    api = await connect()  # what the engine writes with
    kube = Kube(api, "ns")
    try:
        assert info.server == api.server == other
        assert info.token == "other-token"
        answer = await kube.get_configmap("who")
        assert answer is not None and answer["metadata"]["name"] == "other"
        assert seen == ["other Bearer other-token"]
    finally:
        await kube.close()


async def test_in_cluster_alone_gives_both_clients_the_service_account(
    sa_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(credentials, "SA_DIR", sa_dir)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    for k, v in IN_POD.items():
        monkeypatch.setenv(k, v)
    info = _login_handler(Settings())()
    creds = resolve()
    assert creds.source is Source.IN_CLUSTER
    assert info.server == creds.server == "https://10.96.0.1:443"
    assert info.token == "in-cluster-token" and info.default_namespace == "own-ns"
    (sa_dir / "token").write_text("rotated")  # kubelet rotates the projected token
    assert creds.bearer_token() == "rotated"
    assert to_kopf(creds).token == "rotated"


def test_ipv6_service_host_is_bracketed(sa_dir: Path, tmp_path: Path) -> None:
    creds = resolve(environ={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
                    sa_dir=sa_dir, home=tmp_path)
    assert creds.server == "https://[fd00::1]:6443"


def test_kubeconfig_data_fields_and_relative_paths(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    b64 = {name: base64.b64encode(path.read_bytes()).decode()
           for name, path in (("ca", pki.ca.cert), ("cert", pki.admin.cert), ("key", pki.admin.key))}
    inline = write_kubeconfig(tmp_path / "inline.kubeconfig", "https://127.0.0.1:6443",
                              {"client-certificate-data": b64["cert"], "client-key-data": b64["key"]},
                              {"certificate-authority-data": b64["ca"]})
    creds = resolve(str(inline), environ={}, sa_dir=tmp_path / "none", home=tmp_path)
    info = to_kopf(creds)
    assert (info.ca_data, info.certificate_data, info.private_key_data) == (b64["ca"], b64["cert"], b64["key"])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert ssl_context(creds, scratch) is not False  # the decoded PEMs load: CA and client certificate

    rel = write_kubeconfig(tmp_path / "pki" / "rel.kubeconfig", "https://127.0.0.1:6443",
                           {"client-certificate": pki.admin.cert.name, "client-key": pki.admin.key.name},
                           {"certificate-authority": pki.ca.cert.name})
    creds = resolve(str(rel), environ={}, sa_dir=tmp_path / "none", home=tmp_path)
    assert creds.ca_path == str(pki.ca.cert) and creds.cert_path == str(pki.admin.cert)
    assert to_kopf(creds).certificate_path == str(pki.admin.cert)
    assert creds.namespace == "elsewhere"


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "gcp"}}])
def test_plugins_are_refused_by_name(tmp_path: Path, user: dict[str, Any]) -> None:
    path = write_kubeconfig(tmp_path / "k", "https://x", user)
    with pytest.raises(CredentialsError, match="exec and auth-provider"):
        resolve(str(path), environ={}, sa_dir=tmp_path, home=tmp_path)


def test_broken_kubeconfig_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("current-context: nowhere\n")
    with pytest.raises(CredentialsError, match=str(path)):
        resolve(str(path), environ={}, sa_dir=tmp_path, home=tmp_path)
