"""Checks of the build pod's uid, security context, Secret key and warm-slot settings (pure, no Kubernetes).

``Settings.validate`` runs them when the settings load; the patched pod as a whole is checked by
``k8s/podcheck.py`` when the operator starts (it needs the generated pod).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huskies_agent.settings import BuildPodSettings

#: Kubernetes' rule for a Secret's keys (they also become file names in the build pod).
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
#: The largest uid Kubernetes accepts for runAsUser.
MAX_UID = 2**31 - 1


def check_build_pod_settings(build: BuildPodSettings) -> str:
    """Why the build pod's uid, security context or Secret key settings are unusable ("" when fine)."""
    for name in ("agent_uid", "git_uid"):
        uid = getattr(build, name)
        if not 0 < uid <= MAX_UID:
            why = " (Claude Code refuses to skip its permission prompts as root)" if name == "agent_uid" else ""
            return f"build.{name}: must be a non-root uid from 1 to {MAX_UID}, got {uid}{why}"
    if build.agent_uid == build.git_uid:
        return (f"build.agent_uid and build.git_uid are both {build.agent_uid}: the agent must run as another "
                "uid than the containers holding the git credentials, or it could read them")
    for name in ("container_security_context", "pod_security_context"):
        taken = sorted({"runAsUser", "runAsGroup"} & set(getattr(build, name)))
        if taken and name == "container_security_context":
            return f"build.{name}: {', '.join(taken)} differ per container: set build.agent_uid and build.git_uid"
        if "runAsNonRoot" in getattr(build, name) and getattr(build, name)["runAsNonRoot"] is not True:
            return f"build.{name}.runAsNonRoot: the build pod runs non-root; it cannot be turned off"
    keys = {"git_token_key": build.git_token_key, "git_ssh_private_key_key": build.git_ssh_private_key_key,
            "git_known_hosts_key": build.git_known_hosts_key, "anthropic_secret_key": build.anthropic_secret_key}
    for name, key in keys.items():
        if not _SECRET_KEY.match(key) or key in (".", ".."):
            return f"build.{name}: {key!r} is not a Secret key (letters, digits, '-', '_' or '.')"
    git_keys = [build.git_token_key, build.git_ssh_private_key_key, build.git_known_hosts_key]
    if len(set(git_keys)) != len(git_keys):
        return f"build.git_*_key: the token, ssh key and known_hosts keys must differ, got {git_keys}"
    return ""


def check_warm_settings(build: BuildPodSettings) -> str:
    """Why the warm-slot settings are unusable ("" when fine)."""
    if build.warm_slots < 0:
        return f"build.warm_slots: must be 0 or more, got {build.warm_slots}"
    if not build.warm_slots:
        return ""
    if not build.warm_priority_class_name:
        return ("build.warm_priority_class_name: must name a PriorityClass with a value below the "
                "build pods' priority when build.warm_slots is set (the chart creates one)")
    if build.warm_priority_class_name == build.priority_class_name:
        return ("build.warm_priority_class_name: must differ from build.priority_class_name, "
                "or build pods could never preempt a placeholder")
    if not (build.warm_command and all(isinstance(a, str) and a for a in build.warm_command)):
        return f"build.warm_command: expected a non-empty list of strings, got {build.warm_command!r}"
    return ""
