"""The Helm chart without a cluster: lint, schema, Kubernetes schemas, settings mapping, shape."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART, CI_VALUES, ROOT, Helm, find, kinds, rendered_config

from huskies_agent.settings import BuildPodSettings, Settings

FULL = CI_VALUES / "full-values.yaml"
DEFAULT = CI_VALUES / "default-values.yaml"
URL = "ws://huskies-rendezvous:3001/crdt-sync"
MONITORING_GROUP = "monitoring.coreos.com/"


def load_settings(config: dict[str, Any], tmp_path: Path, **environ: str) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Settings.load(path, environ={"POD_NAME": "huskies-agent-abc", "POD_NAMESPACE": "builders", **environ})


# ------------------------------------------------------------------------------------------ files


def test_chart_crd_is_the_operators_crd() -> None:
    """The chart ships the very file the operator package ships (and `huskies-agent crd` prints)."""
    ours = CHART / "crds" / "storyjobs.yaml"
    theirs = ROOT / "operator" / "huskies_agent" / "crds" / "storyjobs.yaml"
    assert ours.read_bytes() == theirs.read_bytes(), (
        "charts/huskies-agent/crds/storyjobs.yaml differs from operator/huskies_agent/crds/storyjobs.yaml; "
        "copy the operator's file into the chart"
    )
    assert [p.name for p in (CHART / "crds").iterdir()] == ["storyjobs.yaml"]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/huskies/huskies-agent"
    assert values["build"]["image"]["repository"] == "ghcr.io/huskies/huskies-agent-runner"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("values", ["default", "full"])
def test_helm_lint_strict(helm: Helm, values: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "-f", str(CI_VALUES / f"{values}-values.yaml"))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_ci_values_pass_the_schema_and_use_every_value() -> None:
    """full-values.yaml sets every value the chart has (so the tests below exercise each one)."""
    from tests.chart.chartlib import value_leaves

    full = yaml.safe_load(FULL.read_text())

    def has(path: str) -> bool:
        node: Any = full
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [path for path in value_leaves() if not has(path)]
    assert not missing, f"ci/full-values.yaml does not set: {missing}"


# ------------------------------------------------------------------------------------------ bad values


def _named(path: str) -> str:
    """helm names a bad value as a JSON pointer (/a/b) in schema errors, dotted (a.b) in ours."""
    return rf"({re.escape(path)}|{re.escape('/' + path.replace('.', '/'))})"


BAD_VALUES = [
    pytest.param([], [], "rendezvous.url", id="url-missing"),
    pytest.param([], ["rendezvous.url=http://rendezvous:3001/crdt-sync"], "rendezvous.url", id="url-http"),
    pytest.param([], ["rendezvous.url=rendezvous:3001"], "rendezvous.url", id="url-no-scheme"),
    pytest.param([], [f"rendezvous.url={URL}", "maxConcurrent=-1"], "maxConcurrent", id="maxConcurrent-negative"),
    pytest.param(["--set-string", "maxConcurrent=four"], [f"rendezvous.url={URL}"], "maxConcurrent",
                 id="maxConcurrent-string"),
    pytest.param([], [f"rendezvous.url={URL}", "maxRetries=0"], "maxRetries", id="maxRetries-zero"),
    pytest.param([], [f"rendezvous.url={URL}", "build.maxBudgetUsd=0"], "build.maxBudgetUsd",
                 id="maxBudgetUsd-zero"),
    pytest.param([], [f"rendezvous.url={URL}", "dailyBudgetUsd=-5"], "dailyBudgetUsd", id="dailyBudget-negative"),
    pytest.param([], [f"rendezvous.url={URL}", "claimTimeoutSeconds=0"], "claimTimeoutSeconds",
                 id="claimTimeout-zero"),
    pytest.param([], [f"rendezvous.url={URL}", "build.image.pullPolicy=Sometimes"], "build.image.pullPolicy",
                 id="pullPolicy"),
    pytest.param([], [f"rendezvous.url={URL}", "metrics.port=70000"], "metrics.port", id="metrics-port"),
    pytest.param([], [f"rendezvous.url={URL}", "clusterName=not a label"], "clusterName", id="clusterName"),
    pytest.param([], [f"rendezvous.url={URL}", "maxconcurent=3"], "maxconcurent", id="unknown-value"),
    pytest.param([], [f"rendezvous.url={URL}", "lease.renewDeadlineSeconds=15"], "lease.renewDeadlineSeconds",
                 id="renew-deadline-not-shorter"),
    pytest.param([], [f"rendezvous.url={URL}", "lease.retryPeriodSeconds=9"], "lease.retryPeriodSeconds",
                 id="retry-period-too-long"),
    pytest.param([], [f"rendezvous.url={URL}", "lease.renewSeconds=5"], "renewSeconds", id="renamed-value"),
    pytest.param([], [f"rendezvous.url={URL}", "build.ttlSecondsAfterFinished=600"], "ttlSecondsAfterFinished",
                 id="removed-value"),
    pytest.param([], [f"rendezvous.url={URL}", "spreadDelaySeconds=-1"], "spreadDelaySeconds",
                 id="spreadDelay-negative"),
    pytest.param([], [f"rendezvous.url={URL}", "agentAuthPauseSeconds=0"], "agentAuthPauseSeconds",
                 id="agentAuthPause-zero"),
    pytest.param([], [f"rendezvous.url={URL}", "build.checkpointIntervalSeconds=0"],
                 "build.checkpointIntervalSeconds", id="checkpointInterval-zero"),
    pytest.param([], [f"rendezvous.url={URL}", "metrics.service.enabled=false",
                      "metrics.serviceMonitor.enabled=true"], "metrics.service.enabled",
                 id="servicemonitor-without-service"),
]


@pytest.mark.parametrize(("extra", "sets", "named"), BAD_VALUES)
def test_bad_values_fail_template_naming_the_value(helm: Helm, extra: list[str], sets: list[str], named: str) -> None:
    proc = helm.run(*helm.template_args(sets=sets), *extra, check=False)
    assert proc.returncode != 0, f"helm template accepted bad values {sets} {extra}"
    assert re.search(_named(named), proc.stderr), proc.stderr


# ------------------------------------------------------------------------------------------ Kubernetes schemas


def _supported_versions() -> list[str]:
    from kubernetes_validate import utils

    versions = sorted(set(utils.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    return [v for v in versions if tuple(int(p) for p in v.split(".")[:2]) >= (1, 29)]


def _validate(docs: list[dict[str, Any]], version: str) -> list[str]:
    import kubernetes_validate

    errors = []
    for doc in docs:
        if doc["apiVersion"].startswith(MONITORING_GROUP):
            continue  # Prometheus Operator CRD types: not in the Kubernetes schemas
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc.message} at {list(exc.path)}")
    return errors


def test_kubernetes_validate_is_strict() -> None:
    """Control: the validator used below rejects an unknown field."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "bogus": 1}
    assert _validate([bad], "1.34.0")


@pytest.mark.parametrize("version", _supported_versions())
@pytest.mark.parametrize("values", ["default", "full"])
def test_rendered_objects_validate_against_kubernetes_schemas(helm: Helm, version: str, values: str) -> None:
    docs = helm.render(values=[CI_VALUES / f"{values}-values.yaml"], kube_version=version, include_crds=True)
    assert "CustomResourceDefinition" in kinds(docs)
    errors = _validate(docs, version)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", ["1.29.0", "1.34.0"])
def test_build_job_from_rendered_settings_validates(helm: Helm, tmp_path: Path, version: str) -> None:
    """The operator's Job built from the chart's config (full values) is a valid batch/v1 Job."""
    from huskies_agent.k8s.objects import RunSpec, build_job, build_storyjob

    settings = load_settings(rendered_config(helm.render(values=[FULL])), tmp_path)
    run = RunSpec("PROJ-42 add a thing", "2_current", "eu-west-1-builders", 3)
    job = build_job(settings, run, "0b7c5a3e-1111-2222-3333-444455556666")
    assert not _validate([job], version)
    storyjob = build_storyjob(settings, run)
    assert storyjob["metadata"]["namespace"] == "builders"


# ------------------------------------------------------------------------------------------ values -> settings

#: value path -> (settings attribute path, expected value from ci/full-values.yaml)
FULL_EXPECTED: dict[str, tuple[str, Any]] = {
    "rendezvous.url": ("rendezvous_url", "wss://rendezvous.example.com:8443/crdt-sync"),
    "clusterName": ("cluster_name", "eu-west-1"),
    "nodeId": ("node_id", "eu-west-1-builders"),
    "advertiseAddress": ("advertise_address", "builders.eu-west-1.example.com"),
    "maxConcurrent": ("max_concurrent", 12),
    "maxRetries": ("max_retries", 5),
    "spreadDelaySeconds": ("spread_delay_seconds", 2.5),
    "agentAuthPauseSeconds": ("agent_auth_pause_seconds", 1800.0),
    "dailyBudgetUsd": ("daily_budget_usd", 40.0),
    "claimTimeoutSeconds": ("claim_timeout_seconds", 900.0),
    "claimSettleSeconds": ("claim_settle_seconds", 0.5),
    "confirmTimeoutSeconds": ("confirm_timeout_seconds", 7.5),
    "presenceIntervalSeconds": ("presence_interval_seconds", 20.0),
    "resyncIntervalSeconds": ("resync_interval_seconds", 45.0),
    "finishedTtlSeconds": ("finished_ttl_seconds", 7200.0),
    "noPodTimeoutSeconds": ("no_pod_timeout_seconds", 240.0),
    "imagePullTimeoutSeconds": ("image_pull_timeout_seconds", 300.0),
    "pendingTimeoutSeconds": ("pending_timeout_seconds", 1200.0),
    "pendingScaleUpTimeoutSeconds": ("pending_scale_up_timeout_seconds", 2400.0),
    "lease.durationSeconds": ("lease_duration_seconds", 20.0),
    "lease.renewDeadlineSeconds": ("lease_renew_deadline_seconds", 12.0),
    "lease.retryPeriodSeconds": ("lease_retry_period_seconds", 3.0),
    "websocket.maxSizeBytes": ("ws_max_size", 16777216),  # extraConfig wins over the value
    "websocket.reconnectMinSeconds": ("reconnect_min_seconds", 2.0),
    "websocket.reconnectMaxSeconds": ("reconnect_max_seconds", 60.0),
    "metrics.port": ("metrics_port", 9090),
    "metrics.host": ("metrics_host", "::"),
    "build.image.digest": (
        "build.image",
        "registry.example.com/huskies/runner@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    "build.image.pullPolicy": ("build.image_pull_policy", "Always"),
    "build.imagePullSecrets": ("build.image_pull_secrets", ("regcred",)),
    "build.serviceAccount.name": ("build.service_account", "huskies-builder"),
    "build.repoUrl": ("build.repo_url", "https://github.com/example/app.git"),
    "build.baseBranch": ("build.base_branch", "trunk"),
    "build.git.existingSecret": ("build.git_secret", "huskies-git"),
    "build.anthropic.existingSecret": ("build.anthropic_secret", "huskies-anthropic"),
    "build.resources.requests": ("build.requests", {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"}),
    "build.resources.limits": ("build.limits", {"cpu": "4", "memory": "8Gi"}),
    "build.nodeSelector": ("build.node_selector", {"huskies.dev/pool": "build"}),
    "build.tolerations": (
        "build.tolerations", ({"key": "huskies.dev/build", "operator": "Exists", "effect": "NoSchedule"},)),
    "build.affinity": ("build.affinity", yaml.safe_load(FULL.read_text())["build"]["affinity"]),
    "build.priorityClassName": ("build.priority_class_name", "huskies-build"),
    "build.activeDeadlineSeconds": ("build.active_deadline_seconds", 5400),
    "build.checkpointIntervalSeconds": ("build.checkpoint_interval_seconds", 300.0),
    "build.extraEnv": ("build.extra_env", ({"name": "GIT_AUTHOR_NAME", "value": "huskies bot"},)),
    "build.extraVolumes": ("build.extra_volumes", ({"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}},)),
    "build.extraVolumeMounts": ("build.extra_volume_mounts", ({"name": "cache", "mountPath": "/cache"},)),
    "build.podAnnotations": ("build.pod_annotations", {"cost-center": "builds"}),
    "build.podLabels": ("build.pod_labels", {"team": "platform"}),
    "build.model": ("build.model", "claude-sonnet-4-5"),
    "build.maxTurns": ("build.max_turns", 120),
    "build.maxBudgetUsd": ("build.max_budget_usd", 12.5),
    "build.agentTimeoutSeconds": ("build.agent_timeout_seconds", 3600),
    "build.protectFromConsolidation": ("build.protect_from_consolidation", False),
    "build.git.tokenKey": ("build.git_token_key", "github-token"),
    "build.git.sshPrivateKeyKey": ("build.git_ssh_private_key_key", "id_ed25519"),
    "build.git.knownHostsKey": ("build.git_known_hosts_key", "ssh_known_hosts"),
    "build.anthropic.existingSecretKey": ("build.anthropic_secret_key", "ANTHROPIC_API_KEY"),
    "build.agentUid": ("build.agent_uid", 1000650001),
    "build.gitUid": ("build.git_uid", 1000650002),
    "build.containerSecurityContext": ("build.container_security_context", {"seLinuxOptions": {"level": "s0:c26,c5"}}),
    "build.podSecurityContext": ("build.pod_security_context", {"seLinuxOptions": {"level": "s0:c26,c5"}}),
    "build.podPatch": ("build.pod_patch", yaml.safe_load(FULL.read_text())["build"]["podPatch"]),
    "build.podJsonPatch": ("build.pod_json_patch", tuple(yaml.safe_load(FULL.read_text())["build"]["podJsonPatch"])),
}


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_full_values_map_onto_settings(helm: Helm, tmp_path: Path) -> None:
    """Every operator value lands in the settings field settings.py names, with the right type."""
    docs = helm.render(values=[FULL])
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    settings = load_settings(rendered_config(docs), tmp_path, HUSKIES_RENDEZVOUS_TOKEN_FILE=str(token))
    wrong = {
        value: (attr, _attr(settings, attr), expected)
        for value, (attr, expected) in FULL_EXPECTED.items()
        if _attr(settings, attr) != expected
    }
    assert not wrong, wrong
    assert settings.instance == "huskies-agent"  # the release name
    assert settings.namespace == "builders" and settings.replica_id == "huskies-agent-abc"  # from the pod env
    assert settings.rendezvous_token == "s3cret"


def test_default_values_keep_the_operators_defaults(helm: Helm, tmp_path: Path) -> None:
    """With default values the config file changes nothing but what the chart must set."""
    settings = load_settings(rendered_config(helm.render(values=[DEFAULT])), tmp_path)
    rendered = dataclasses.asdict(settings)
    defaults = dataclasses.asdict(Settings(replica_id="huskies-agent-abc", namespace="builders"))
    assert rendered.pop("rendezvous_url") == URL
    defaults.pop("rendezvous_url")
    # The chart names the install after the release and gives build pods their own ServiceAccount.
    assert rendered.pop("instance") == "huskies-agent"
    defaults.pop("instance")
    assert rendered["build"].pop("service_account") == "huskies-agent-build"
    defaults["build"].pop("service_account")
    # Settings holds tuples where YAML has lists.
    assert json.loads(json.dumps(rendered)) == json.loads(json.dumps(defaults))


def test_every_settings_field_is_rendered(helm: Helm) -> None:
    """The config file carries every setting, so the chart is complete when settings.py grows."""
    config = rendered_config(helm.render(values=[DEFAULT]))
    from_env = {"rendezvous_token", "namespace", "replica_id"}  # token file, POD_NAMESPACE, POD_NAME
    top = {f.name for f in dataclasses.fields(Settings)} - from_env
    build = {f.name for f in dataclasses.fields(BuildPodSettings)}
    assert set(config) == top, f"settings not rendered: {top - set(config)}; unknown keys: {set(config) - top}"
    assert set(config["build"]) == build, set(build) ^ set(config["build"])


def test_extra_config_is_merged_last(helm: Helm, tmp_path: Path) -> None:
    config = rendered_config(helm.render(sets=[
        f"rendezvous.url={URL}", "extraConfig.max_concurrent=9", "extraConfig.build.max_turns=7"]))
    settings = load_settings(config, tmp_path)
    assert settings.max_concurrent == 9 and settings.build.max_turns == 7
    assert settings.build.repo_url == ""  # the rest of build is kept


def test_image_tags_default_to_app_version(helm: Helm) -> None:
    docs = helm.render(values=[DEFAULT])
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/huskies/huskies-agent:0.1.0"
    assert rendered_config(docs)["build"]["image"] == "ghcr.io/huskies/huskies-agent-runner:0.1.0"
    docs = helm.render(values=[DEFAULT], sets=["image.tag=1.2.3", "build.image.tag=4.5.6"])
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.2.3")
    assert rendered_config(docs)["build"]["image"].endswith(":4.5.6")


# ------------------------------------------------------------------------------------------ objects


def test_default_install_objects(helm: Helm) -> None:
    docs = helm.render(values=[DEFAULT])
    assert kinds(docs) == sorted([
        "ClusterRole", "ClusterRole", "ConfigMap", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding",
        "Service", "ServiceAccount", "ServiceAccount",
    ])
    assert all(d["metadata"]["namespace"] == "huskies-agent" for d in docs if d["kind"] != "ClusterRole")


def test_optional_objects(helm: Helm) -> None:
    docs = helm.render(values=[FULL])
    for kind in ("ServiceMonitor", "NetworkPolicy", "ClusterRole", "PrometheusRule"):
        assert kind in kinds(docs)
    pod_monitor = helm.render(values=[FULL], sets=["metrics.serviceMonitor.enabled=false",
                                                   "metrics.podMonitor.enabled=true"])
    assert "PodMonitor" in kinds(pod_monitor) and "ServiceMonitor" not in kinds(pod_monitor)
    dashboard = find(docs, "ConfigMap", "huskies-agent-husky-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    # PDB only with more than one replica
    assert "PodDisruptionBudget" not in kinds(helm.render(values=[DEFAULT], sets=["replicaCount=1"]))
    assert "Service" not in kinds(helm.render(values=[DEFAULT], sets=["metrics.service.enabled=false"]))


def test_deployment(helm: Helm) -> None:
    docs = helm.render(values=[DEFAULT], sets=["rendezvous.existingSecret=rdv", "rendezvous.existingSecretKey=tk"])
    deployment = find(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["operator", "--config", "/etc/huskies-agent/config.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in container["env"]), "token must be a file"
    # the token: the Secret mounted as a file, its path in HUSKIES_RENDEZVOUS_TOKEN_FILE
    token_file = Path(env["HUSKIES_RENDEZVOUS_TOKEN_FILE"]["value"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(token_file.parent)]
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "rdv" and secret["items"] == [{"key": "tk", "path": token_file.name}]
    assert mount["readOnly"] is True
    config_mount = mounts["/etc/huskies-agent"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "huskies-agent-config"
    # probes on the metrics port
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # hardening
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == "huskies-agent"
    # the ConfigMap checksum rolls the pods
    assert re.fullmatch(r"[0-9a-f]{64}", spec["template"]["metadata"]["annotations"]["checksum/config"])


def _checksum(docs: list[dict[str, Any]]) -> str:
    return str(find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def test_config_change_rolls_the_pods(helm: Helm) -> None:
    base = _checksum(helm.render(values=[DEFAULT]))
    assert base == _checksum(helm.render(values=[DEFAULT]))
    assert base != _checksum(helm.render(values=[DEFAULT], sets=["maxConcurrent=7"]))
    assert base != _checksum(helm.render(values=[DEFAULT], sets=["build.nodeSelector.pool=build"]))
    # a change outside the config file does not
    assert base == _checksum(helm.render(values=[DEFAULT], sets=["replicaCount=3"]))


def test_rbac_has_no_secrets_and_no_wildcards(helm: Helm) -> None:
    docs = helm.render(values=[FULL])
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc["rules"]:
            assert "secrets" not in rule["resources"], doc["kind"]
            assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"], rule
    # No cluster-wide rights: only the read/delete ClusterRoles aggregated into view/edit/admin.
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        labels = role["metadata"]["labels"]
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels), role["metadata"]
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["huskies.dev"] and set(rule["verbs"]) <= {"get", "list", "watch", "delete"}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_operator_selectors_never_match_build_pods(helm: Helm, tmp_path: Path) -> None:
    """Deployment/Service/PDB/NetworkPolicy select only operator pods, never the Jobs' pods;
    and the operator's kopf label filter never matches its own pods."""
    from huskies_agent.k8s.objects import RunSpec, build_job

    docs = helm.render(values=[FULL])
    settings = load_settings(rendered_config(docs), tmp_path)
    job = build_job(settings, RunSpec("s-1", "2_current", "n", 1), "uid")
    build_labels = job["spec"]["template"]["metadata"]["labels"]
    deployment = find(docs, "Deployment")
    operator_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": find(docs, "Service")["spec"]["selector"],
        "PodDisruptionBudget": find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": find(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        "ServiceMonitor": find(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
        "PodMonitor": find(helm.render(values=[FULL], sets=["metrics.serviceMonitor.enabled=false",
                                                            "metrics.podMonitor.enabled=true"]),
                           "PodMonitor")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert _matches(selector, operator_labels), kind
        assert not _matches(selector, build_labels), kind
    kopf_filter = {"app.kubernetes.io/managed-by": "huskies-agent", "app.kubernetes.io/instance": settings.instance}
    assert _matches(kopf_filter, job["metadata"]["labels"]) and _matches(kopf_filter, build_labels)
    assert not _matches(kopf_filter, operator_labels)


@pytest.mark.parametrize(("url", "port"), [
    ("ws://huskies-rendezvous:3001/crdt-sync", 3001),
    ("wss://rendezvous.example.com/crdt-sync", 443),
    ("ws://rendezvous.example.com/crdt-sync", 80),
    ("wss://rendezvous.example.com:8443/crdt-sync", 8443),
])
def test_network_policy(helm: Helm, url: str, port: int) -> None:
    docs = helm.render(sets=[f"rendezvous.url={url}", "networkPolicy.enabled=true"])
    policy = find(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    egress_ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in policy["egress"]]
    assert egress_ports == [
        [(53, "TCP"), (53, "UDP")],
        [(443, "TCP"), (6443, "TCP")],
        [(port, "TCP")],
    ]
    dns_peer = policy["egress"][0]["to"][0]
    assert dns_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


# ------------------------------------------------------------------------------------------ dashboard


def _metric_families() -> set[str]:
    from huskies_agent.metrics import Metrics

    metrics = Metrics()
    metrics.lead()  # the leader's families: the rendezvous connection gauges too
    names = set()
    for family in metrics.registry.collect():
        if family.name.startswith("huskies_"):  # not the process and platform collectors'
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_dashboard_covers_the_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "huskies-agent.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bhuskies_[a-z0-9_]+", e)}
    families = _metric_families()
    known = families | {f"{f}_{s}" for f in families for s in ("bucket", "sum", "count")}
    assert used <= known, f"dashboard queries unknown metrics: {used - known}"
    unused = {f for f in families if not any(u == f or u.startswith(f + "_") for u in used)}
    assert not unused, f"metrics without a dashboard panel: {unused}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "huskies-agent"


def test_dashboard_configmap_holds_the_json(helm: Helm) -> None:
    docs = helm.render(values=[DEFAULT], sets=["metrics.dashboard.enabled=true"])
    cm = find(docs, "ConfigMap", "huskies-agent-dashboard")
    assert json.loads(cm["data"]["huskies-agent.json"]) == json.loads(
        (CHART / "dashboards" / "huskies-agent.json").read_text())


def test_kubernetes_older_than_1_29_is_refused(helm: Helm) -> None:
    proc = helm.run(*helm.template_args(values=[DEFAULT], kube_version="1.28.9"), check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
