"""``kubectl exec deploy/huskies-agent -- huskies-agent stories list`` works with no flags: the CLI run
with exactly the environment and files the chart gives the operator's container, against a real
rendezvous that requires the token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.chart.chartlib import CI_VALUES, Helm, find, rendered_config
from tests.helpers.rendezvous import start_rendezvous

DEFAULT = CI_VALUES / "default-values.yaml"


def _container_env(container: dict[str, Any], pod: dict[str, Any], files: dict[str, str], root: Path) -> dict[str, str]:
    """The container's plain env values, with every mounted path moved under ``root`` and its files written."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]]
        items = (source.get("secret") or source.get("configMap") or {}).get("items") or []
        for item in items:
            path = root / mount["mountPath"].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[item["key"]])
        if "configMap" in source and not items:
            for key, text in files.items():
                if key.endswith(".yaml"):
                    path = root / mount["mountPath"].lstrip("/") / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            value = str(entry["value"])
            env[entry["name"]] = str(root / value.lstrip("/")) if value.startswith("/") else value
    return env


def test_stories_list_in_the_operators_container_needs_no_flags(helm: Helm, tmp_path: Path) -> None:
    with start_rendezvous(tmp_path / "rv", token="chart-s3cret") as server:
        docs = helm.render(values=[DEFAULT], sets=[f"rendezvous.url={server.url}", "rendezvous.existingSecret=rdv"])
        pod = find(docs, "Deployment")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        config = yaml.safe_dump(rendered_config(docs))
        env = _container_env(container, pod, {"config.yaml": config, "token": "chart-s3cret\n"}, tmp_path / "fs")
        assert {"HUSKIES_CONFIG", "HUSKIES_RENDEZVOUS_TOKEN_FILE"} <= set(env)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HUSKIES_")}
        run = [sys.executable, "-m", "huskies_agent"]
        added = subprocess.run([*run, "stories", "add", "1_from_pod", "--stage", "2_current"],
                               env={**clean, **env}, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        listed = subprocess.run([*run, "stories", "list", "-o", "yaml"],
                                env={**clean, **env}, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in yaml.safe_load(listed.stdout)["stories"]] == ["1_from_pod"]
        # Control: without the token file the rendezvous refuses the same command.
        env.pop("HUSKIES_RENDEZVOUS_TOKEN_FILE")
        refused = subprocess.run([*run, "stories", "list"], env={**clean, **env}, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
