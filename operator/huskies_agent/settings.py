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

from huskies_agent.pipeline.model import ParseLimits

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
    #: Secret holding git credentials (key ``token`` for HTTPS, or ``ssh-privatekey``).
    git_secret: str = ""
    #: Secret holding the Anthropic credentials (key ``api-key``).
    anthropic_secret: str = ""
    requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    limits: Mapping[str, str] = field(default_factory=lambda: {"memory": "4Gi"})
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    priority_class_name: str = ""
    active_deadline_seconds: int = 3 * 3600
    ttl_seconds_after_finished: int = 3600
    extra_env: tuple[Mapping[str, Any], ...] = ()
    extra_volumes: tuple[Mapping[str, Any], ...] = ()
    extra_volume_mounts: tuple[Mapping[str, Any], ...] = ()
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    #: Claude Code limits passed to the runner.
    model: str = ""
    max_turns: int = 200
    max_budget_usd: float = 0.0
    agent_timeout_seconds: int = 2 * 3600
    #: Mark running pods so cluster-autoscaler/Karpenter do not evict them for consolidation.
    protect_from_consolidation: bool = True


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
    lease_duration_seconds: float = 15.0
    lease_renew_seconds: float = 5.0
    presence_interval_seconds: float = 30.0
    #: A node not seen for this long is dead and its claims are released.
    claim_timeout_seconds: float = 600.0
    max_concurrent: int = 4
    max_retries: int = 3
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
            "lease_duration_seconds", "lease_renew_seconds", "presence_interval_seconds",
            "claim_timeout_seconds", "resync_interval_seconds", "confirm_timeout_seconds",
            "finished_ttl_seconds", "no_pod_timeout_seconds", "image_pull_timeout_seconds",
            "pending_timeout_seconds", "reconnect_min_seconds", "reconnect_max_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be greater than 0, got {getattr(self, name)}")
        if self.max_concurrent < 0:
            raise SettingsError(f"max_concurrent: must be 0 or more, got {self.max_concurrent}")
        if self.max_retries < 1:
            raise SettingsError(f"max_retries: must be at least 1, got {self.max_retries}")
        if self.lease_renew_seconds >= self.lease_duration_seconds:
            raise SettingsError("lease_renew_seconds: must be shorter than lease_duration_seconds")
        try:
            self.parse_limits  # noqa: B018 - validates the three document_* bounds
        except ValueError as exc:
            raise SettingsError(f"document_max_*: {exc}") from None
        if self.claim_settle_seconds < 0:
            raise SettingsError("claim_settle_seconds: must be 0 or more")
        if self.build.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(f"build.image_pull_policy: invalid {self.build.image_pull_policy!r}")
        if not self.build.image:
            raise SettingsError("build.image: must be set")

    def require_rendezvous(self) -> None:
        if not self.rendezvous_url:
            raise SettingsError("rendezvous_url: must be set (HUSKIES_RENDEZVOUS_URL)")

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with secrets redacted, for the start-up log."""
        data = dataclasses.asdict(self)
        if data.get("rendezvous_token"):
            data["rendezvous_token"] = "<redacted>"
        return data


T = TypeVar("T")


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``HUSKIES_<FIELD>`` and ``HUSKIES_BUILD_<FIELD>`` env vars (YAML-parsed values)."""
    out = dict(raw)
    build = dict(out.get("build") or {})
    scalar_fields = {f.name for f in dataclasses.fields(Settings)} - {"build"}
    build_fields = {f.name for f in dataclasses.fields(BuildPodSettings)}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name.startswith("build_") and name[len("build_"):] in build_fields:
            build[name[len("build_"):]] = _env_value(value)
        elif name in scalar_fields or name == "rendezvous_token_file":
            out[name] = value if name in ("rendezvous_token", "rendezvous_url", "node_id") else _env_value(value)
    if build:
        out["build"] = build
    return out


def _env_value(value: str) -> Any:
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
