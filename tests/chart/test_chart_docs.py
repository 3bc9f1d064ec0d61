"""docs/install.md and values.yaml stay in step: every value documented, commented, mapped."""

from __future__ import annotations

import dataclasses
import re

from tests.chart.chartlib import (
    ROOT,
    TABLE_END,
    TABLE_START,
    value_comments,
    value_leaves,
    values_defaults,
    values_table,
)

from huskies_agent.settings import BuildPodSettings, Settings

DOC = ROOT / "docs" / "install.md"


def test_configuration_table_is_generated_from_values_yaml() -> None:
    text = DOC.read_text()
    assert TABLE_START in text and TABLE_END in text
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == values_table(), (
        "docs/install.md's configuration table is stale: regenerate it with `python -m tests.chart.chartlib`"
    )


def test_every_top_level_value_is_in_the_doc() -> None:
    text = DOC.read_text()
    missing = [key for key in values_defaults() if not re.search(rf"`{re.escape(key)}[`.]", text)]
    assert not missing, missing


def test_every_value_is_commented() -> None:
    comments = value_comments()
    missing = [path for path in value_leaves() if not comments.get(path)]
    assert not missing, f"values.yaml keys without a `# --` comment: {missing}"


def test_setting_names_in_comments_exist() -> None:
    """The [snake_case] setting named in each value's comment is a real settings field."""
    top = {f.name for f in dataclasses.fields(Settings)}
    build = {f"build.{f.name}" for f in dataclasses.fields(BuildPodSettings)}
    named: set[str] = set()
    for comment in value_comments().values():
        m = re.search(r"\[([a-z_., ]+)\]\s*$", comment)
        if m:
            named.update(s.strip() for s in m.group(1).split(","))
    assert named, "no settings named"
    assert named <= top | build, named - (top | build)
    # every setting a value feeds is named somewhere (token, namespace, replica_id, instance come from
    # the pod or the release name)
    not_values = {"rendezvous_token", "namespace", "replica_id", "instance"}
    assert (top - {"build"} - not_values) | build <= named, ((top - {"build"} - not_values) | build) - named
