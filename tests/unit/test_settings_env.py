"""Environment overrides: string settings keep their text; only typed settings are read as YAML."""

from __future__ import annotations

import pytest

from huskies_agent.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"HUSKIES_BUILD_BASE_BRANCH": "1.10"}, "build.base_branch", "1.10"),
        ({"HUSKIES_CLUSTER_NAME": "no"}, "cluster_name", "no"),
        ({"HUSKIES_CLUSTER_NAME": "0x1F"}, "cluster_name", "0x1F"),
        ({"HUSKIES_BUILD_MODEL": "null"}, "build.model", "null"),
        ({"HUSKIES_INSTANCE": "  spaced  "}, "instance", "  spaced  "),
        ({"HUSKIES_MAX_CONCURRENT": "7"}, "max_concurrent", 7),
        ({"HUSKIES_CLAIM_TIMEOUT_SECONDS": "1.5"}, "claim_timeout_seconds", 1.5),
        ({"HUSKIES_BUILD_PROTECT_FROM_CONSOLIDATION": "false"}, "build.protect_from_consolidation", False),
        ({"HUSKIES_BUILD_REQUESTS": '{cpu: "2"}'}, "build.requests", {"cpu": "2"}),
        ({"HUSKIES_BUILD_IMAGE_PULL_SECRETS": "[regcred]"}, "build.image_pull_secrets", ("regcred",)),
    ],
)
def test_env_value_types(env: dict[str, str], field: str, expected: object) -> None:
    settings = Settings.load(environ=env)
    value: object = settings
    for part in field.split("."):
        value = getattr(value, part)
    assert value == expected


def test_env_typed_value_still_rejected_with_its_name() -> None:
    with pytest.raises(SettingsError, match="max_concurrent"):
        Settings.load(environ={"HUSKIES_MAX_CONCURRENT": "many"})
    with pytest.raises(SettingsError, match="build.protect_from_consolidation"):
        Settings.load(environ={"HUSKIES_BUILD_PROTECT_FROM_CONSOLIDATION": "maybe"})
