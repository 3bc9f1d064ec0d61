"""Is a (patched) build pod spec still a build pod? Pure checks, each problem said in words.

Two kinds of problem:

* **Shape**: an unknown PodSpec or Container field (the API server would drop it silently) or
  a value of the wrong type, a container without a name or an image, a mount of a volume
  the pod does not have.
* **The runner's contract and the credential isolation** (``docs/runner.md``, "Isolation"):
  ``clone`` (init container), ``agent`` and ``publish`` keep their command, args and
  termination message path; ``clone`` and ``publish`` share the git uid and the agent runs
  as another, non-root uid; no container but ``clone`` and ``publish`` mounts the git
  Secret, the publisher's private state, a host path or a service account token, or reads the
  git Secret into its environment; nothing runs privileged, adds capabilities or may gain privileges; no shared
  process namespace, host PID/IPC namespace or service account token; ``restartPolicy``
  stays ``Never``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from huskies_agent import contract
from huskies_agent.k8s import buildpod

_S, _I, _B, _L, _M = str, int, bool, list, dict

#: PodSpec fields (Kubernetes 1.29-1.34) and their JSON types.
POD_FIELDS: dict[str, type] = {
    "activeDeadlineSeconds": _I, "affinity": _M, "automountServiceAccountToken": _B, "containers": _L,
    "dnsConfig": _M, "dnsPolicy": _S, "enableServiceLinks": _B, "ephemeralContainers": _L, "hostAliases": _L,
    "hostIPC": _B, "hostNetwork": _B, "hostPID": _B, "hostUsers": _B, "hostname": _S, "imagePullSecrets": _L,
    "initContainers": _L, "nodeName": _S, "nodeSelector": _M, "os": _M, "overhead": _M, "preemptionPolicy": _S,
    "priority": _I, "priorityClassName": _S, "readinessGates": _L, "resourceClaims": _L, "resources": _M,
    "restartPolicy": _S, "runtimeClassName": _S, "schedulerName": _S, "schedulingGates": _L,
    "securityContext": _M, "serviceAccount": _S, "serviceAccountName": _S, "setHostnameAsFQDN": _B,
    "shareProcessNamespace": _B, "subdomain": _S, "terminationGracePeriodSeconds": _I, "tolerations": _L,
    "topologySpreadConstraints": _L, "volumes": _L,
}
CONTAINER_FIELDS: dict[str, type] = {
    "args": _L, "command": _L, "env": _L, "envFrom": _L, "image": _S, "imagePullPolicy": _S, "lifecycle": _M,
    "livenessProbe": _M, "name": _S, "ports": _L, "readinessProbe": _M, "resizePolicy": _L, "resources": _M,
    "restartPolicy": _S, "securityContext": _M, "startupProbe": _M, "stdin": _B, "stdinOnce": _B,
    "terminationMessagePath": _S, "terminationMessagePolicy": _S, "tty": _B, "volumeDevices": _L,
    "volumeMounts": _L, "workingDir": _S,
}
#: What the runner's contract fixes in each of its three containers.
CONTRACT_FIELDS = ("command", "args", "terminationMessagePath")
GIT_CONTAINERS = frozenset({contract.CLONE_CONTAINER, contract.PUBLISH_CONTAINER})
#: Env names that carry git credentials, refused in the agent's container.
GIT_CREDENTIAL_ENV = frozenset({contract.ENV_GIT_TOKEN, contract.ENV_GIT_TOKEN_FILE, contract.ENV_GIT_SSH_KEY_FILE})
ISOLATION = "the agent must never see the git credentials (docs/runner.md, Isolation)"
_TOKEN_RISK = "with any right to read Secrets, an API token reads the git Secret"


def _type_name(t: type) -> str:
    return {str: "a string", int: "a whole number", bool: "true or false", list: "a list", dict: "a mapping"}[t]


def _is(value: Any, t: type) -> bool:
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def _fields(obj: Mapping[str, Any], table: Mapping[str, type], where: str) -> Iterator[str]:
    for key, value in obj.items():
        if key not in table:
            near = [k for k in table if k.lower() == str(key).lower()]
            hint = f" (did you mean {near[0]}?)" if near else ""
            yield f"{where}.{key}: unknown field{hint}"
        elif value is not None and not _is(value, table[key]):
            yield f"{where}.{key}: expected {_type_name(table[key])}, got {value!r}"


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        items = spec.get(kind)
        if isinstance(items, list):
            for c in items:
                if isinstance(c, Mapping):
                    yield kind, c


def shape_problems(spec: Mapping[str, Any]) -> list[str]:
    """Unknown fields, wrong types, nameless or imageless containers, mounts of missing volumes."""
    problems = list(_fields(spec, POD_FIELDS, "spec"))
    if problems:
        return problems
    volumes = set()
    for i, v in enumerate(spec.get("volumes") or []):
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
            problems.append(f"spec.volumes[{i}]: expected a Volume with a name, got {v!r}")
        else:
            volumes.add(v["name"])
    names: set[str] = set()
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            where = f"spec.{kind}[{i}]"
            if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
                problems.append(f"{where}: expected a Container with a name, got {c!r}")
                continue
            where = f"spec.{kind}[{c['name']}]"
            if c["name"] in names:
                problems.append(f"{where}: a second container of that name")
            names.add(c["name"])
            if not c.get("image"):
                problems.append(f"{where}: {c['name']!r} is not one of the build pod's containers "
                                f"({', '.join(_OURS)}) and has no image: a typo? A new container needs its image")
            found = list(_fields(c, CONTAINER_FIELDS, where))
            problems += found
            if found:
                continue
            for j, e in enumerate(c.get("env") or []):
                if not isinstance(e, Mapping) or not isinstance(e.get("name"), str):
                    problems.append(f"{where}.env[{j}]: expected an EnvVar with a name, got {e!r}")
            for j, m in enumerate(c.get("volumeMounts") or []):
                if not isinstance(m, Mapping) or not isinstance(m.get("mountPath"), str):
                    problems.append(f"{where}.volumeMounts[{j}]: expected a VolumeMount with a mountPath, got {m!r}")
                elif m.get("name") not in volumes:
                    problems.append(f"{where}.volumeMounts[{m['mountPath']}]: volume {m.get('name')!r} "
                                    "is not in spec.volumes")
    return problems


_OURS = (contract.CLONE_CONTAINER, contract.AGENT_CONTAINER, contract.PUBLISH_CONTAINER)


def _find(spec: Mapping[str, Any], name: str) -> tuple[str, Mapping[str, Any]] | None:
    return next(((kind, c) for kind, c in _containers(spec) if c.get("name") == name), None)


def _uid(spec: Mapping[str, Any], c: Mapping[str, Any]) -> Any:
    own = (c.get("securityContext") or {}).get("runAsUser")
    return own if own is not None else (spec.get("securityContext") or {}).get("runAsUser")


def _secret_volumes(spec: Mapping[str, Any], git_secret: str) -> set[str]:
    """Volumes private to the git uid: its Secret (however mounted), its state and its /tmp."""
    private = {buildpod.GIT_SECRET_VOLUME, buildpod.STATE_VOLUME, buildpod.GIT_TMP_VOLUME}
    for v in spec.get("volumes") or []:
        if not git_secret:
            break
        if (v.get("secret") or {}).get("secretName") == git_secret:
            private.add(v["name"])
        for source in (v.get("projected") or {}).get("sources") or []:
            if isinstance(source, Mapping) and (source.get("secret") or {}).get("name") == git_secret:
                private.add(v["name"])
    return private


def contract_problems(generated: Mapping[str, Any], spec: Mapping[str, Any], git_secret: str) -> list[str]:
    """What a patch broke of the runner's contract or of the credential isolation."""
    problems: list[str] = []
    homes = {contract.CLONE_CONTAINER: "initContainers", contract.AGENT_CONTAINER: "containers",
             contract.PUBLISH_CONTAINER: "containers"}
    for name, home in homes.items():
        found = _find(spec, name)
        if found is None or found[0] != home:
            problems.append(f"container {name!r}: must stay in spec.{home} (the runner's three containers)")
            continue
        original = _find(generated, name)
        assert original is not None
        for key in CONTRACT_FIELDS:
            if found[1].get(key) != original[1].get(key):
                problems.append(f"container {name!r}: {key} is the runner's contract with the operator; "
                                "a patch must not change it")
        if found[1].get("restartPolicy") is not None:
            problems.append(f"container {name!r}: restartPolicy must stay unset")
    for kind, c in _containers(spec):
        if kind == "containers" and c["name"] not in homes:
            problems.append(f"container {c['name']!r}: a Job's pod ends when all its containers have, so an extra "
                            "container would hold the run open; add a sidecar to spec.initContainers with "
                            "restartPolicy: Always (a native sidecar, stopped after the run)")
        elif kind == "ephemeralContainers":
            problems.append(f"container {c['name']!r}: ephemeral containers cannot be part of a pod template")
    if problems:
        return problems
    problems += _uid_problems(spec)
    problems += _isolation_problems(spec, git_secret)
    return problems


def _uid_problems(spec: Mapping[str, Any]) -> list[str]:
    uids: dict[str, Any] = {}
    for name in _OURS:
        found = _find(spec, name)
        if found is not None:
            uids[name] = _uid(spec, found[1])
    problems = []
    agent, clone, publish = uids[contract.AGENT_CONTAINER], uids[contract.CLONE_CONTAINER], \
        uids[contract.PUBLISH_CONTAINER]
    for name, uid in uids.items():
        if not _is(uid, int) or uid < 0:
            problems.append(f"container {name!r}: runAsUser must be set to a uid (0 or more), got {uid!r}")
    if problems:
        return problems
    if agent == 0:
        problems.append("container 'agent': must not run as uid 0 (Claude Code refuses to skip its permission "
                        "prompts as root, and root would defeat the isolation)")
    if clone != publish:
        problems.append(f"containers 'clone' ({clone}) and 'publish' ({publish}) must run as the same (git) uid: "
                        "publish continues from clone's private state")
    if agent in (clone, publish):
        problems.append(f"container 'agent' runs as uid {agent}, the git uid too: the git uid's files and "
                        f"processes would be the agent's; {ISOLATION}")
    return problems


def _isolation_problems(spec: Mapping[str, Any], git_secret: str) -> list[str]:
    problems = []
    private = _secret_volumes(spec, git_secret)
    host_paths = {v["name"] for v in spec.get("volumes") or [] if "hostPath" in v}
    tokens = {v["name"] for v in spec.get("volumes") or []
              if any(isinstance(src, Mapping) and "serviceAccountToken" in src
                     for src in (v.get("projected") or {}).get("sources") or [])}
    for kind, c in _containers(spec):
        name = c["name"]
        where = f"container {name!r}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged containers can read every volume of the pod; {ISOLATION}")
        if sc.get("allowPrivilegeEscalation"):
            problems.append(f"{where}: allowPrivilegeEscalation must stay false")
        if ((sc.get("capabilities") or {}).get("add")):
            problems.append(f"{where}: adding capabilities is refused (e.g. SYS_PTRACE or DAC_OVERRIDE reach "
                            f"the git uid's processes and files); {ISOLATION}")
        if sc.get("runAsNonRoot") is False and name in _OURS:
            problems.append(f"{where}: runAsNonRoot must stay true")
        if name in GIT_CONTAINERS:
            continue
        mounts = {m.get("name") for m in c.get("volumeMounts") or []}
        for vol in sorted(mounts & private):
            problems.append(f"{where} ({kind}): mounts {vol!r}, which holds the git credentials or the "
                            f"publisher's private state; only 'clone' and 'publish' may; {ISOLATION}")
        for vol in sorted(mounts & host_paths):
            problems.append(f"{where} ({kind}): mounts the hostPath volume {vol!r}; a host path reaches other "
                            f"containers' Secret volumes under the kubelet's directory; {ISOLATION}")
        for vol in sorted(mounts & tokens):
            problems.append(f"{where} ({kind}): mounts {vol!r}, a service account token; {_TOKEN_RISK}; "
                            f"{ISOLATION}")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
            if git_secret and ref.get("name") == git_secret:
                problems.append(f"{where}: env {e['name']} reads the git Secret {git_secret!r}; {ISOLATION}")
            if name == contract.AGENT_CONTAINER and e.get("name") in GIT_CREDENTIAL_ENV:
                problems.append(f"{where}: env {e['name']} carries git credentials; {ISOLATION}")
        for e in c.get("envFrom") or []:
            if git_secret and isinstance(e, Mapping) and (e.get("secretRef") or {}).get("name") == git_secret:
                problems.append(f"{where}: envFrom reads the git Secret {git_secret!r}; {ISOLATION}")
    for key, why in (("shareProcessNamespace", "the agent would see the git uid's processes"),
                     ("hostPID", "the agent would see the node's processes"),
                     ("hostIPC", "the agent would share the node's IPC namespace"),
                     ("automountServiceAccountToken", f"the agent would get an API token; {_TOKEN_RISK}")):
        if spec.get(key):
            problems.append(f"spec.{key}: must stay false: {why}; {ISOLATION}")
    if spec.get("restartPolicy") != "Never":
        problems.append(f"spec.restartPolicy: must stay Never (retries are the pipeline's, counted across "
                        f"nodes), got {spec.get('restartPolicy')!r}")
    return problems


def problems(generated: Mapping[str, Any], spec: Mapping[str, Any], git_secret: str) -> list[str]:
    """Everything wrong with ``spec``, the patched form of the ``generated`` build pod spec."""
    found = shape_problems(spec)
    return found or contract_problems(generated, spec, git_secret)
