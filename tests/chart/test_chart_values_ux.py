"""Chart values as a new user writes them: friendly failures, the usual forms, no double scraping."""

from __future__ import annotations

import re

import pytest
import yaml
from tests.chart.chartlib import CHART, Helm, find

URL = "ws://huskies-rendezvous:3001/crdt-sync"


def _fail(helm: Helm, *sets: str) -> str:
    proc = helm.run(*helm.template_args(sets=list(sets)), check=False)
    assert proc.returncode != 0, f"helm template accepted {sets}"
    return proc.stderr


def test_missing_rendezvous_url_gets_the_friendly_message(helm: Helm) -> None:
    err = _fail(helm)
    assert "rendezvous.url is required" in err and "--set rendezvous.url=wss://" in err, err


def test_bad_rendezvous_url_is_still_refused_by_the_schema(helm: Helm) -> None:
    assert "rendezvous" in _fail(helm, "rendezvous.url=http://x:1/crdt-sync")


@pytest.mark.parametrize("form", ["imagePullSecrets[0]=regcred", "imagePullSecrets[0].name=regcred"])
def test_pull_secrets_accept_names_and_references(helm: Helm, form: str) -> None:
    build_form = "build." + form
    docs = helm.render(sets=[f"rendezvous.url={URL}", form, build_form])
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    config = find(docs, "ConfigMap", "huskies-agent-config")["data"]["config.yaml"]
    assert re.search(r"image_pull_secrets:\s*\n\s*- regcred", config), config


def test_existing_service_account_needs_a_name(helm: Helm) -> None:
    err = _fail(helm, f"rendezvous.url={URL}", "serviceAccount.create=false")
    assert "serviceAccount.name is required" in err
    docs = helm.render(sets=[f"rendezvous.url={URL}", "serviceAccount.create=false", "serviceAccount.name=ops"])
    assert find(docs, "RoleBinding")["subjects"][0]["name"] == "ops"
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_service_and_pod_monitor_are_exclusive(helm: Helm) -> None:
    err = _fail(helm, f"rendezvous.url={URL}", "metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true")
    assert "scraped twice" in err


def test_cluster_wide_rbac_was_removed(helm: Helm) -> None:
    assert "rbac.clusterWide was removed" in _fail(helm, f"rendezvous.url={URL}", "rbac.clusterWide=true")


def test_role_grants_only_what_the_operator_calls(helm: Helm) -> None:
    rules = find(helm.render(sets=[f"rendezvous.url={URL}"]), "Role")["rules"]
    by_resource = {r: set(rule["verbs"]) for rule in rules for r in rule["resources"]}
    assert by_resource["storyjobs/status"] == {"get", "patch"}
    # create: Events on StoryJobs; list/watch: a node autoscaler's Events on build pods (docs/autoscaling.md).
    assert by_resource["events"] == {"create", "list", "watch"}


def test_aggregated_roles_let_namespace_viewers_list_storyjobs(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}"])
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    view = roles["huskies-agent-huskies-agent-storyjobs-view"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert view["rules"][0]["verbs"] == ["get", "list", "watch"]
    edit = roles["huskies-agent-huskies-agent-storyjobs-edit"]
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert edit["rules"][0]["verbs"] == ["delete"]
    off = helm.render(sets=[f"rendezvous.url={URL}", "rbac.aggregateToDefaultRoles=false"])
    assert not [d for d in off if d["kind"] == "ClusterRole"]


def test_common_labels_on_every_object(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "commonLabels.team=builds",
                             "metrics.prometheusRule.enabled=true"])
    assert docs
    for doc in docs:
        assert doc["metadata"]["labels"].get("team") == "builds", (doc["kind"], doc["metadata"]["name"])


def test_operator_volumes_mounts_and_env_from(helm: Helm) -> None:
    docs = helm.render(sets=[
        f"rendezvous.url={URL}",
        "extraVolumes[0].name=ca", "extraVolumes[0].configMap.name=corp-ca",
        "extraVolumeMounts[0].name=ca", "extraVolumeMounts[0].mountPath=/etc/ssl/corp",
        "envFrom[0].configMapRef.name=proxy-env",
    ])
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    container = pod["containers"][0]
    assert {"name": "ca", "mountPath": "/etc/ssl/corp"} in container["volumeMounts"]
    assert container["envFrom"] == [{"configMapRef": {"name": "proxy-env"}}]


def test_prometheus_rule_alerts(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "metrics.prometheusRule.enabled=true",
                             "metrics.prometheusRule.labels.release=kps"])
    rule = find(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) >= {"HuskiesAgentNoLeader", "HuskiesAgentRendezvousDisconnected", "HuskiesAgentHighFailureRatio",
                           "HuskiesAgentStoriesBlocked", "HuskiesAgentSlowClaimToRunning"}
    for alert in alerts.values():
        assert 'namespace="huskies-agent"' in alert["expr"], alert["expr"]
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"]["description"]
    assert not [d for d in helm.render(sets=[f"rendezvous.url={URL}"]) if d["kind"] == "PrometheusRule"]


def test_new_alerts_take_their_thresholds_from_values_and_look_at_the_leader(helm: Helm) -> None:
    docs = helm.render(sets=[f"rendezvous.url={URL}", "metrics.prometheusRule.enabled=true",
                             "metrics.prometheusRule.blockedStories=3", "metrics.prometheusRule.blockedFor=20m",
                             "metrics.prometheusRule.claimToRunningP99Seconds=450",
                             "metrics.prometheusRule.claimToRunningFor=7m"])
    alerts = {r["alert"]: r for r in find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    blocked, slow = alerts["HuskiesAgentStoriesBlocked"], alerts["HuskiesAgentSlowClaimToRunning"]
    assert blocked["expr"].rstrip().endswith("> 3") and blocked["for"] == "20m"
    assert 'blocked="true"' in blocked["expr"] and "huskies_leader" in blocked["expr"]
    assert "histogram_quantile(0.99" in slow["expr"] and "huskies_claim_to_running_seconds_bucket" in slow["expr"]
    assert slow["expr"].rstrip().endswith("> 450") and slow["for"] == "7m"
    # Standbys export no connection sample: the disconnected alert is scoped to the Lease holder.
    assert alerts["HuskiesAgentRendezvousDisconnected"]["expr"].startswith("(huskies_leader{")
    with pytest.raises(AssertionError):
        helm.render(sets=[f"rendezvous.url={URL}", "metrics.prometheusRule.blockedFor=soon"])


def test_notes_point_at_docs_a_packaged_chart_user_can_open() -> None:
    """NOTES ends with a link into the released docs, not a path inside a clone of the repository."""
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    last = [line for line in notes.splitlines() if line.strip()][-1]
    assert last.startswith("Docs: {{ .Chart.Home }}/blob/v{{ .Chart.AppVersion }}/docs/install.md"), last
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["home"].startswith("https://")
