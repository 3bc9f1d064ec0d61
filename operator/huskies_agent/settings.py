"""One typed settings object for the operator, from a YAML file and ``HUSKIES_*`` env vars.

Precedence: built-in defaults < config file (``--config``/``HUSKIES_CONFIG``) < env vars.
The Helm chart renders the file from ``values.yaml``; every field is documented in the
README's configuration table. Invalid values raise :class:`SettingsError` naming the
setting, so a bad install fails at start with a clear message instead of looping.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlparse

import yaml

from huskies_agent.contract import (
    AGENT_UID,
    ANTHROPIC_KEY_KEY,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    GIT_KNOWN_HOSTS_KEY,
    GIT_SSH_KEY_KEY,
    GIT_TOKEN_KEY,
    GIT_UID,
)
from huskies_agent.pipeline.model import ParseLimits
from huskies_agent.podsettings import check_build_pod_settings, check_warm_settings

ENV_PREFIX = "HUSKIES_"


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it."""


@dataclass(frozen=True)
class BuildPodSettings:
    """What every story's Job/pod looks like (the "build pod template")."""

    image: str = "ghcr.io/huskies/huskies-agent-runner:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str = ""
    #: git repository the runner clones and pushes to.
    repo_url: str = ""
    base_branch: str = "main"
    #: Secret holding git credentials (keys: ``git_token_key`` for HTTPS, ``git_ssh_private_key_key``).
    git_secret: str = ""
    #: Secret holding the Anthropic credentials (key: ``anthropic_secret_key``).
    anthropic_secret: str = ""
    requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    limits: Mapping[str, str] = field(default_factory=lambda: {"memory": "4Gi"})
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    priority_class_name: str = ""
    active_deadline_seconds: int = 3 * 3600
    #: How often the run snapshots and pushes (fenced) its work in progress while the agent runs.
    checkpoint_interval_seconds: float = DEFAULT_CHECKPOINT_INTERVAL_SECONDS
    extra_env: tuple[Mapping[str, Any], ...] = ()
    extra_volumes: tuple[Mapping[str, Any], ...] = ()
    extra_volume_mounts: tuple[Mapping[str, Any], ...] = ()
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    #: Claude Code limits passed to the runner.
    model: str = ""
    max_turns: int = 200
    #: Spend cap of one run in USD (``--max-budget-usd``); must be > 0: there is no "unlimited".
    max_budget_usd: float = 10.0
    agent_timeout_seconds: int = 2 * 3600
    #: Mark running pods so cluster-autoscaler/Karpenter do not evict them for consolidation.
    protect_from_consolidation: bool = True
    # --- the build pod's uids, security contexts and patches (docs/install.md, "Changing the build pod")
    #: uid (and gid) of the ``agent`` container, which runs Claude Code: not 0, not the git uid.
    agent_uid: int = AGENT_UID
    #: uid (and gid) of ``clone`` and ``publish``, the only containers that see the git Secret.
    git_uid: int = GIT_UID
    #: Merged over each of the three containers' securityContext (runAsUser: use the uids above).
    container_security_context: Mapping[str, Any] = field(default_factory=dict)
    #: Merged over the pod's securityContext.
    pod_security_context: Mapping[str, Any] = field(default_factory=dict)
    #: Strategic-merge patch of the generated PodSpec (k8s/podpatch.py), checked at start.
    pod_patch: Mapping[str, Any] = field(default_factory=dict)
    #: RFC 6902 operations over the PodSpec, applied after ``pod_patch``.
    pod_json_patch: tuple[Mapping[str, Any], ...] = ()
    # --- key names inside the git and Anthropic Secrets (e.g. as External Secrets or Vault write them)
    git_token_key: str = GIT_TOKEN_KEY
    git_ssh_private_key_key: str = GIT_SSH_KEY_KEY
    git_known_hosts_key: str = GIT_KNOWN_HOSTS_KEY
    anthropic_secret_key: str = ANTHROPIC_KEY_KEY
    # Warm capacity (docs/autoscaling.md, "Warm capacity"): placeholder pods shaped like a build pod
    # at a negative priority keep nodes up; a build pod preempts one and starts at once.
    #: Build slots kept warm (0: none); never more than max_concurrent minus the runs in flight.
    warm_slots: int = 0
    #: PriorityClass of the placeholders; its value must be below the build pods' priority.
    warm_priority_class_name: str = ""
    #: Image of the placeholders (empty: the runner image, which the nodes pull for builds anyway).
    warm_image: str = ""
    #: What a placeholder runs: it must run until killed and need no writable root filesystem.
    warm_command: tuple[str, ...] = ("sleep", "infinity")
    #: Whether this cluster can add nodes for build pods (an autoscaler is set up); said in presence,
    #: and without it a placeholder that cannot be scheduled means no room beyond the warm slots.
    can_scale: bool = True


@dataclass(frozen=True)
class Settings:
    rendezvous_url: str = ""
    rendezvous_token: str = ""
    namespace: str = "default"
    #: Label value naming this cluster in Job/pod labels (cost and ownership).
    cluster_name: str = "default"
    #: The install's name: prefixes the Lease, identity ConfigMap and labels.
    instance: str = "huskies-agent"
    #: This replica's name as Lease holder (the pod name in a cluster).
    replica_id: str = field(default_factory=socket.gethostname)
    #: Fixed node id; empty = generate once and persist it in the identity ConfigMap.
    node_id: str = ""
    #: Address advertised in the presence entry (informational).
    advertise_address: str = ""
    #: Leader election, with client-go's names and defaults: a standby takes the Lease over after
    #: ``lease_duration_seconds`` without a renewal; the leader steps down when it has not renewed
    #: within ``lease_renew_deadline_seconds`` of its last successful renewal's start; every replica
    #: tries every ``lease_retry_period_seconds``. duration > renew deadline > 1.2 x retry period.
    lease_duration_seconds: float = 15.0
    lease_renew_deadline_seconds: float = 10.0
    lease_retry_period_seconds: float = 2.0
    presence_interval_seconds: float = 30.0
    #: A node not seen for this long is dead and its claims are released.
    claim_timeout_seconds: float = 600.0
    max_concurrent: int = 4
    max_retries: int = 3
    #: How long a claimable story waits for each node ranked before this one (work spreading).
    spread_delay_seconds: float = 1.0
    #: After a run's model API refused the key, this node claims nothing for this long.
    agent_auth_pause_seconds: float = 900.0
    #: Spend of this node's finished runs per UTC day after which it stops claiming (0: no daily limit).
    daily_budget_usd: float = 0.0
    resync_interval_seconds: float = 30.0
    #: How long to wait for the rendezvous to confirm a claim before giving up on it.
    confirm_timeout_seconds: float = 5.0
    #: Extra wait after confirmation before a Job starts (0: none); lets racing claims settle.
    claim_settle_seconds: float = 0.0
    finished_ttl_seconds: float = 3600.0
    #: A Job that has no pod after this long fails (missing ServiceAccount, quota...).
    no_pod_timeout_seconds: float = 120.0
    #: A pod whose image cannot be pulled for this long fails the StoryJob.
    image_pull_timeout_seconds: float = 180.0
    #: A pod that stays unschedulable this long releases its claim (capacity-aware).
    pending_timeout_seconds: float = 900.0
    #: Autoscaler-aware waiting (docs/autoscaling.md): while the pod's Events say a node autoscaler is
    #: adding a node for it (TriggeredScaleUp, Nominated), an unschedulable pod keeps its claim past
    #: pending_timeout_seconds up to this bound (never shorter than pending_timeout_seconds). Events that
    #: say no scale-up is possible (NotTriggerScaleUp, FailedScaleUp, Karpenter's FailedScheduling)
    #: release the claim at once.
    pending_scale_up_timeout_seconds: float = 1800.0
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    ws_max_size: int = 64 * 1024 * 1024
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 30.0
    #: Document entries (stories, node presence) beyond these bounds are quarantined:
    #: listed with a reason, counted and logged once, never worked on.
    document_max_depth: int = 16
    document_max_string_length: int = 65_536
    document_max_entry_bytes: int = 1_048_576
    build: BuildPodSettings = field(default_factory=BuildPodSettings)

    # ------------------------------------------------------------------ derived
    @property
    def lease_name(self) -> str:
        return f"{self.instance}-leader"

    @property
    def identity_configmap(self) -> str:
        return f"{self.instance}-identity"

    @property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            max_depth=self.document_max_depth,
            max_string_length=self.document_max_string_length,
            max_entry_bytes=self.document_max_entry_bytes,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        path = path or environ.get(ENV_PREFIX + "CONFIG")
        if path:
            try:
                loaded = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise SettingsError(f"config file {path}: {exc}") from exc
            if not isinstance(loaded, dict):
                raise SettingsError(f"config file {path}: expected a mapping at the top level")
            raw = loaded
        raw = _apply_env(raw, environ)
        if "namespace" not in raw and environ.get("POD_NAMESPACE"):
            raw["namespace"] = environ["POD_NAMESPACE"]
        if "replica_id" not in raw and environ.get("POD_NAME"):
            raw["replica_id"] = environ["POD_NAME"]
        token_file = raw.pop("rendezvous_token_file", None)
        if token_file and not raw.get("rendezvous_token"):
            try:
                raw["rendezvous_token"] = Path(token_file).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"rendezvous_token_file {token_file}: {exc}") from exc
        settings = _build(cls, raw, "")
        settings.validate()
        return settings

    def validate(self) -> None:
        url = urlparse(self.rendezvous_url) if self.rendezvous_url else None
        if url is not None and (url.scheme not in ("ws", "wss") or not url.netloc):
            raise SettingsError(
                f"rendezvous_url: expected ws://host:port/crdt-sync or wss://..., got {self.rendezvous_url!r}"
            )
        positive = (
            "lease_duration_seconds", "lease_renew_deadline_seconds", "lease_retry_period_seconds",
            "presence_interval_seconds",
            "claim_timeout_seconds", "resync_interval_seconds", "confirm_timeout_seconds",
            "finished_ttl_seconds", "no_pod_timeout_seconds", "image_pull_timeout_seconds",
            "pending_timeout_seconds", "pending_scale_up_timeout_seconds",
            "reconnect_min_seconds", "reconnect_max_seconds",
            "agent_auth_pause_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be greater than 0, got {getattr(self, name)}")
        if self.max_concurrent < 0:
            raise SettingsError(f"max_concurrent: must be 0 or more, got {self.max_concurrent}")
        if self.max_retries < 1:
            raise SettingsError(f"max_retries: must be at least 1, got {self.max_retries}")
        lease_margin_error = check_lease_margins(
            self.lease_duration_seconds, self.lease_renew_deadline_seconds, self.lease_retry_period_seconds)
        if lease_margin_error:
            raise SettingsError(lease_margin_error)
        try:
            self.parse_limits  # noqa: B018 - validates the three document_* bounds
        except ValueError as exc:
            raise SettingsError(f"document_max_*: {exc}") from None
        if self.claim_settle_seconds < 0:
            raise SettingsError("claim_settle_seconds: must be 0 or more")
        if not 0 <= self.spread_delay_seconds < float("inf"):
            raise SettingsError(f"spread_delay_seconds: must be 0 or more, got {self.spread_delay_seconds}")
        if not 0 < self.build.checkpoint_interval_seconds < float("inf"):
            raise SettingsError("build.checkpoint_interval_seconds: must be greater than 0, got "
                                f"{self.build.checkpoint_interval_seconds}")
        if not 0 < self.build.max_budget_usd < float("inf"):
            raise SettingsError(
                f"build.max_budget_usd: must be a positive number of USD per run, got {self.build.max_budget_usd} "
                "(0 no longer means unlimited; set a high cap instead)"
            )
        if not 0 <= self.daily_budget_usd < float("inf"):
            raise SettingsError(f"daily_budget_usd: must be 0 (no daily limit) or more, got {self.daily_budget_usd}")
        if self.build.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(f"build.image_pull_policy: invalid {self.build.image_pull_policy!r}")
        if not self.build.image:
            raise SettingsError("build.image: must be set")
        problem = check_build_pod_settings(self.build)
        if problem:
            raise SettingsError(problem)
        problem = check_warm_settings(self.build)
        if problem:
            raise SettingsError(problem)

    def require_rendezvous(self) -> None:
        if not self.rendezvous_url:
            raise SettingsError("rendezvous_url: must be set (HUSKIES_RENDEZVOUS_URL)")

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with secrets redacted, for the start-up log."""
        data = dataclasses.asdict(self)
        if data.get("rendezvous_token"):
            data["rendezvous_token"] = "<redacted>"
        return data


#: client-go's JitterFactor: the renew deadline leaves room for at least one jittered retry.
LEASE_JITTER_FACTOR = 1.2

#: Settings that were renamed: the error for the old name says the new one.
RENAMED = {"lease_renew_seconds": "lease_retry_period_seconds (and see lease_renew_deadline_seconds)"}

#: Settings that were removed: the error for them says why (full dotted names).
REMOVED = {
    "build.ttl_seconds_after_finished": "finished Jobs are deleted with their StoryJob after finished_ttl_seconds",
}


def check_lease_margins(duration: float, renew_deadline: float, retry_period: float) -> str:
    """Why these election timings are unsafe ("" when they are fine); client-go's rules.

    The deadline must be shorter than the duration, so a leader that cannot renew stops acting
    before a standby may take over; and longer than a jittered retry period, so a leader gets at
    least one more try before it gives up.
    """
    if renew_deadline >= duration:
        return (f"lease_renew_deadline_seconds ({renew_deadline:g}) must be shorter than "
                f"lease_duration_seconds ({duration:g})")
    if renew_deadline <= LEASE_JITTER_FACTOR * retry_period:
        return (f"lease_renew_deadline_seconds ({renew_deadline:g}) must be longer than "
                f"{LEASE_JITTER_FACTOR:g} x lease_retry_period_seconds ({retry_period:g})")
    return ""


T = TypeVar("T")


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``HUSKIES_<FIELD>`` and ``HUSKIES_BUILD_<FIELD>`` env vars (non-string values are YAML)."""
    out = dict(raw)
    build = dict(out.get("build") or {})
    top_hints = get_type_hints(Settings)
    build_hints = get_type_hints(BuildPodSettings)
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        field_name = name[len("build_"):]
        if name.startswith("build_") and (field_name in build_hints or "build." + field_name in REMOVED):
            build[field_name] = _env_value(value, build_hints.get(field_name, str))
        elif name == "rendezvous_token_file" or name in RENAMED:
            out[name] = value
        elif name in top_hints and name != "build":
            out[name] = _env_value(value, top_hints[name])
    if build:
        out["build"] = build
    return out


def _env_value(value: str, hint: Any) -> Any:
    """An env var's value for a field of type ``hint``.

    String settings take the text as it is (``1.10`` stays ``"1.10"``, ``no`` stays ``"no"``);
    only numbers, booleans, lists and mappings are read as YAML.
    """
    if hint is str:
        return value
    try:
        return yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return value


def _build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - names
    renamed = sorted(u for u in unknown if not prefix and u in RENAMED)
    if renamed:
        raise SettingsError("; ".join(f"{u} was renamed: use {RENAMED[u]}" for u in renamed))
    removed = sorted(prefix + u for u in unknown if prefix + u in REMOVED)
    if removed:
        raise SettingsError("; ".join(f"{u} was removed ({REMOVED[u]}): delete it from the configuration"
                                      for u in removed))
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(prefix + u for u in unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(prefix + name, hints[name], value)
    return cls(**kwargs)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if hint is BuildPodSettings:
        return _build(BuildPodSettings, value or {}, name + ".")
    origin = getattr(hint, "__origin__", None)
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, bool | dict | list):
            raise SettingsError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise SettingsError(f"{name}: expected a whole number, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if origin is tuple:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{name}: expected a list, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict) or hint is Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise SettingsError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return value
