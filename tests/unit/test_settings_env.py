"""Environment overrides: string settings keep their text; only typed settings are read as YAML."""

from __future__ import annotations

from pathlib import Path

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


# ------------------------------------------------------------------ new and removed settings

def test_new_settings_have_their_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.spread_delay_seconds == 1.0
    assert settings.agent_auth_pause_seconds == 900.0
    assert settings.build.checkpoint_interval_seconds == 600.0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HUSKIES_SPREAD_DELAY_SECONDS": "-1"}, "spread_delay_seconds"),
        ({"HUSKIES_AGENT_AUTH_PAUSE_SECONDS": "0"}, "agent_auth_pause_seconds"),
        ({"HUSKIES_BUILD_CHECKPOINT_INTERVAL_SECONDS": "0"}, "build.checkpoint_interval_seconds"),
    ],
)
def test_new_settings_are_validated(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.load(environ=env)


def test_a_removed_setting_says_it_was_removed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("build:\n  ttl_seconds_after_finished: 600\n")
    with pytest.raises(SettingsError, match=r"build\.ttl_seconds_after_finished was removed"):
        Settings.load(config, environ={})
    with pytest.raises(SettingsError, match=r"build\.ttl_seconds_after_finished was removed"):
        Settings.load(environ={"HUSKIES_BUILD_TTL_SECONDS_AFTER_FINISHED": "600"})
