import re

import pytest

from huskies_agent.k8s import naming, objects
from huskies_agent.settings import BuildPodSettings, Settings, SettingsError

DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HOSTILE = ["../../x", "$(rm -rf /)", "a" * 300, "478_ünïcode", "UPPER_case", "-", "日本語", "a b\nc"]


@pytest.mark.parametrize("sid", HOSTILE + ["12_plain"])
def test_names_and_labels_are_valid_and_distinct(sid):
    for epoch in (1, 12345678):
        name = naming.storyjob_name(sid, "2_current", "node-" + "x" * 200, epoch)
        assert len(name) <= 63 and DNS.match(name), name
    value = naming.label_value(sid)
    assert len(value) <= 63 and LABEL.match(value), value


def test_ids_that_slug_alike_stay_apart():
    assert naming.storyjob_name("A_1", "2_current", "n", 1) != naming.storyjob_name("a-1", "2_current", "n", 1)
    assert naming.storyjob_name("a", "2_current", "n", 1) != naming.storyjob_name("a", "2_current", "n", 2)


def test_names_are_unique_per_install_and_per_stage():
    # Two installs (node ids) in one namespace, pipelines with the same story ids (finding 5),
    # and the same epoch reused in another stage (finding 3) never share a name.
    names = {naming.storyjob_name("12_x", stage, node, 2)
             for stage in ("2_current", "3_qa", "4_merge") for node in ("install-a", "install-b")}
    assert len(names) == 6
    assert all(len(n) <= 63 and DNS.match(n) for n in names)


def test_node_selector_narrows_the_instance_selector():
    s = settings()
    assert objects.selector_for_node(s, "n1").startswith(objects.selector_for_instance(s) + ",")
    assert objects.selector_for_node(s, "n1") != objects.selector_for_node(s, "n2")


def test_jobs_have_no_ttl_of_their_own():
    # A finished Job must survive operator downtime (finding 6); it goes with its StoryJob.
    job = objects.build_job(settings(), objects.RunSpec("1_a", "2_current", "n", 1), "uid")
    assert "ttlSecondsAfterFinished" not in job["spec"]


def settings(**build):
    return Settings(namespace="ns", cluster_name="c1", build=BuildPodSettings(
        repo_url="https://git.example/repo.git", git_secret="git", anthropic_secret="anthropic", **build))


def test_job_spec_contract():
    s = settings(node_selector={"pool": "build"}, priority_class_name="builds",
                 tolerations=({"key": "build", "operator": "Exists"},))
    run = objects.RunSpec("42_feature", "2_current", "node-1", 7)
    job = objects.build_job(s, run, owner_uid="uid-1")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "agent" and c["command"] == ["huskies-agent", "run-story"]
    assert c["args"] == ["agent", "--story-id=42_feature", "--stage=2_current",
                         "--repo-url=https://git.example/repo.git", "--base-branch=main", "--epoch=7",
                         "--node=node-1"]
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e for e in c["env"]}
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "anthropic"
    assert not any(name.startswith("HUSKIES_GIT") for name in env)
    # credentials only by reference, never as literal values in the spec
    for container in pod["containers"] + pod["initContainers"]:
        for e in container["env"]:
            if any(w in e["name"] for w in ("TOKEN", "API_KEY")) and not e["name"].endswith("_FILE"):
                assert "value" not in e and "valueFrom" in e, e
    assert pod["nodeSelector"] == {"pool": "build"} and pod["priorityClassName"] == "builds"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    ann = spec["template"]["metadata"]["annotations"]
    assert ann["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert ann["karpenter.sh/do-not-disrupt"] == "true"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "StoryJob" and owner["uid"] == "uid-1" and owner["controller"]
    labels = job["metadata"]["labels"]
    assert labels[naming.LABEL_STORY] == "42_feature" and labels[naming.LABEL_CLUSTER] == "c1"
    assert objects.run_spec_from_object(job) == run
    assert objects.run_spec_from_object({"metadata": spec["template"]["metadata"]}) == run


def test_storyjob_roundtrip_hostile_id():
    s = settings()
    run = objects.RunSpec("$(rm -rf /)", "3_qa", "n", 2)
    sj = objects.build_storyjob(s, run)
    assert sj["spec"]["storyId"] == "$(rm -rf /)"
    assert sj["metadata"]["annotations"][naming.ANNOTATION_STORY_ID] == "$(rm -rf /)"
    assert objects.run_spec_from_object(sj) == run


def test_status_readers():
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    assert objects.job_condition(job) == "Failed"
    assert objects.job_failure(job) == ("BackoffLimitExceeded", "")
    pod = {"status": {"containerStatuses": [{"name": "publish", "state": {"terminated": {
        "exitCode": 0, "message": 'log line\n{"commit": "abc", "pushed": true}'}}}]}}
    code, msg = objects.pod_termination(pod)
    assert code == 0 and objects.parse_result(msg) == {"commit": "abc", "pushed": True}
    assert objects.parse_result("not json") == {}
    evicted = {"status": {"phase": "Failed", "reason": "Evicted"}}
    assert objects.pod_was_disrupted(evicted) == "Evicted"
    target = {"status": {"conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]}}
    assert objects.pod_was_disrupted(target) == "EvictionByEvictionAPI"


def test_settings_env_file_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_concurrent: 2\nbuild:\n  requests: {cpu: 2}\n  repo_url: r\n")
    s = Settings.load(cfg, environ={"HUSKIES_MAX_CONCURRENT": "5", "HUSKIES_RENDEZVOUS_URL": "ws://h:3001/crdt-sync",
                                    "HUSKIES_BUILD_BASE_BRANCH": "dev"})
    assert s.max_concurrent == 5 and s.build.repo_url == "r" and s.build.base_branch == "dev"
    job = objects.build_job(s, objects.RunSpec("1", "2_current", "n", 1), None)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    with pytest.raises(SettingsError, match="max_concurrent"):
        Settings.load(environ={"HUSKIES_MAX_CONCURRENT": "-1"})
    with pytest.raises(SettingsError, match="rendezvous_url"):
        Settings.load(environ={"HUSKIES_RENDEZVOUS_URL": "http://nope"})
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.load(environ={}, path=None).__class__.load(_write(tmp_path, "bogus: 1\n"), environ={})
    with pytest.raises(SettingsError, match="build.requests"):
        Settings.load(_write(tmp_path, "build:\n  requests: [1]\n"), environ={})
    token = tmp_path / "tok"
    token.write_text("s3cret\n")
    s = Settings.load(environ={"HUSKIES_RENDEZVOUS_TOKEN_FILE": str(token)})
    assert s.rendezvous_token == "s3cret" and s.public_dict()["rendezvous_token"] == "<redacted>"


def _write(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return p


def test_exact_node_id_survives_label_mangling():
    node = "a-very-long-cluster-name-that-goes-past-the-label-limit-0123456789abcdef"
    run = objects.RunSpec("5_x", "2_current", node, 4)
    job = objects.build_job(settings(), run, None)
    assert job["metadata"]["labels"][naming.LABEL_NODE] != node  # hashed to fit a label
    assert objects.run_spec_from_object(job) == run
    assert objects.run_spec_from_object({"metadata": job["spec"]["template"]["metadata"]}) == run
