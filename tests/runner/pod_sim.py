"""Runs the containers of the operator's own Job spec as local processes, the way a kubelet would.

What is real: the command, args, env and secret references of each container, the order
(init containers to completion, then the main containers together), each container's
uid and gid from its securityContext (through ``setpriv``, when the tests run as root),
every capability dropped and no_new_privs, and one directory per volume.

Env from ConfigMaps (``configMapKeyRef``, ``envFrom``) is resolved from ``configmaps``, as the kubelet
does (``envFrom`` first, ``env`` over it). A container that is not the runner's (a sidecar from a
pod patch) runs its command and args as a local process: the stand-in for its image. Native
sidecars (init containers with ``restartPolicy: Always``) start in their place among the init
containers, are not waited for, and get SIGTERM once the main containers have ended.

What is a stand-in, and why: there are no mount or PID namespaces (binding volumes over
the spec's paths would hide this machine's own ``/work``). Mount paths are mapped to
per-volume directories and env values naming them are rewritten; a volume mounted only by
one uid's containers is a directory only that uid can enter (0700), which stands in for
"not mounted in the other containers". All processes share this machine's PID namespace,
which is stricter than the pod (there the agent cannot even see the git uid's processes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner_helpers import stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def _python() -> list[str]:
    """An interpreter every uid can run, and the path that finds the package and its dependencies."""
    exe = Path(sys.executable).resolve()
    candidates = [exe, Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")]
    for candidate in candidates:
        if candidate.exists() and all(os.stat(p).st_mode & 0o001 for p in [*candidate.parents, candidate]):
            return [str(candidate)]
    raise RuntimeError(f"no python {sys.version_info[:2]} that other uids can run")


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO_ROOT / "operator"), sysconfig.get_paths()["purelib"],
                            sysconfig.get_paths()["platlib"]])


@dataclass
class ContainerRun:
    name: str
    uid: int
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    termination: str = ""


@dataclass
class PodSim:
    """One pod: ``job`` is the operator's Job; ``secrets`` maps (secret name, key) to values."""

    job: dict[str, Any]
    secrets: Mapping[tuple[str, str], str]
    #: Extra env per container name (e.g. the scripted claude for the agent).
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: ConfigMaps by name (their data), for env from ConfigMaps.
    configmaps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="huskies-pod-", dir="/tmp")))
    runs: dict[str, ContainerRun] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.chmod(0o711)
        self.pod = self.job["spec"]["template"]["spec"]
        self.volume_dirs: dict[str, Path] = {}
        for volume in self.pod["volumes"]:
            self._make_volume(volume)

    # ------------------------------------------------------------------ volumes
    def _uids_mounting(self, name: str) -> set[int]:
        return {self.uid_of(c) for c in self.all_containers()
                if name in {m["name"] for m in c.get("volumeMounts") or []}}

    def all_containers(self) -> list[dict[str, Any]]:
        return list(self.pod.get("initContainers") or []) + list(self.pod["containers"])

    @staticmethod
    def uid_of(container: Mapping[str, Any]) -> int:
        return int(container["securityContext"]["runAsUser"])

    def _make_volume(self, volume: Mapping[str, Any]) -> None:
        path = self.root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        (self.root / "volumes").chmod(0o711)
        uids = self._uids_mounting(volume["name"])
        if "secret" in volume:
            spec = volume["secret"]
            mode = int(spec.get("defaultMode", 0o644))
            for (secret, key), value in self.secrets.items():
                if secret == spec["secretName"]:
                    (path / key).write_text(value)
                    (path / key).chmod(mode)
        if len(uids) == 1 and IS_ROOT:
            (uid,) = uids
            for item in [path, *path.rglob("*")]:
                os.chown(item, uid, uid)
            path.chmod(0o700)  # stands in for: mounted in this uid's containers only
        else:
            path.chmod(0o777)  # an emptyDir shared by several uids
        self.volume_dirs[volume["name"]] = path

    def host_path(self, container: Mapping[str, Any], path: str) -> str:
        """``path`` as seen by ``container`` mapped to this machine (mount paths become volume dirs)."""
        if path == container.get("terminationMessagePath"):
            return str(self.termination_file(container["name"]))
        best = ""
        for mount in container.get("volumeMounts") or []:
            mp = mount["mountPath"]
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best = mp
        if not best:
            return path
        mount = next(m for m in container.get("volumeMounts") or [] if m["mountPath"] == best)
        return str(self.volume_dirs[mount["name"]]) + path[len(best):]

    def termination_file(self, name: str) -> Path:
        term = self.root / "termination"
        term.mkdir(exist_ok=True, mode=0o711)
        return term / name

    # ------------------------------------------------------------------ processes
    def _process(self, container: Mapping[str, Any]) -> tuple[list[str], dict[str, str], str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": _pythonpath()}
        for source in container.get("envFrom") or []:
            env.update(self._env_from(source))
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = self.host_path(container, item["value"])
                continue
            value = self._value_from(item["valueFrom"])
            if value is not None:
                env[item["name"]] = value
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"] == "/tmp":
                env["TMPDIR"] = str(self.volume_dirs[mount["name"]])
        term = self.termination_file(container["name"])
        term.write_text("")
        if IS_ROOT:
            os.chown(term, self.uid_of(container), self.uid_of(container))
        env.update(self.extra_env.get(container["name"], {}))
        if container["command"][0] == "huskies-agent":
            argv = [*_python(), "-m", "huskies_agent", "--log-format", "json", *container["command"][1:],
                    *container["args"]]
        else:  # a sidecar or init container from a patch: its command stands in for its image
            argv = [*container["command"], *(container.get("args") or [])]
        if IS_ROOT:
            uid = self.uid_of(container)
            gid = int(container["securityContext"].get("runAsGroup", uid))
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
                    "--inh-caps=-all", "--bounding-set=-all", "--", *argv]
        cwd = self.host_path(container, container.get("workingDir", "/"))
        return argv, env, cwd

    def _value_from(self, source: Mapping[str, Any]) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = self.secrets.get((ref["name"], ref["key"]))
        else:
            ref = source["configMapKeyRef"]
            value = (self.configmaps.get(ref["name"]) or {}).get(ref["key"])
        if value is None and not ref.get("optional"):
            raise AssertionError(f"{ref} is missing and not optional: the kubelet would not start the container")
        return value

    def _env_from(self, source: Mapping[str, Any]) -> dict[str, str]:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = self.configmaps.get(ref["name"])
        else:
            ref = source["secretRef"]
            found = {key: value for (name, key), value in self.secrets.items() if name == ref["name"]}
            data = found or None
        if data is None:
            if not ref.get("optional"):
                raise AssertionError(f"{ref} is missing and not optional: the kubelet would not start the container")
            return {}
        return {prefix + key: value for key, value in data.items()}

    def start(self, container: Mapping[str, Any]) -> subprocess.Popen[str]:
        argv, env, cwd = self._process(container)
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs[container["name"]] = proc
        self.runs[container["name"]] = ContainerRun(container["name"], self.uid_of(container))
        return proc

    def _collect(self, name: str, timeout: float) -> ContainerRun:
        proc = self.procs[name]
        out, err = proc.communicate(timeout=timeout)
        run = self.runs[name]
        run.returncode, run.stdout, run.stderr = proc.returncode, out, err
        run.termination = self.termination_file(name).read_text()
        return run

    def run_init(self, timeout: float = 120) -> bool:
        """Run the init containers in order; ``False`` when one failed (the pod then fails)."""
        for container in self.pod.get("initContainers") or []:
            self.start(container)
            if container.get("restartPolicy") == "Always":
                continue  # a native sidecar: runs beside the rest of the pod
            if self._collect(container["name"], timeout).returncode != 0:
                return False
        return True

    def sidecars(self) -> list[dict[str, Any]]:
        return [c for c in self.pod.get("initContainers") or [] if c.get("restartPolicy") == "Always"]

    def start_main(self) -> None:
        for container in self.pod["containers"]:
            self.start(container)

    def wait_main(self, timeout: float = 180) -> dict[str, ContainerRun]:
        deadline = time.monotonic() + timeout
        for container in self.pod["containers"]:
            self._collect(container["name"], max(1.0, deadline - time.monotonic()))
        for sidecar in self.sidecars():  # the kubelet stops sidecars once the main containers are done
            proc = self.procs.get(sidecar["name"])
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if proc is not None:
                self._collect(sidecar["name"], 30)
        return self.runs

    def terminate(self) -> None:
        """What the kubelet does when the pod is deleted: SIGTERM to every container's main process."""
        for container in self.pod["containers"]:
            proc = self.procs.get(container["name"])
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self, timeout: float = 180) -> dict[str, ContainerRun]:
        if not self.run_init():
            return self.runs
        self.start_main()
        return self.wait_main(timeout)

    def pod_status(self) -> dict[str, Any]:
        """The finished pod's status as the kubelet reports it (what the operator reads)."""
        def statuses(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for c in containers:
                run = self.runs.get(c["name"])
                if run is not None and run.returncode is not None:
                    out.append({"name": c["name"], "state": {"terminated": {
                        "exitCode": run.returncode, "message": run.termination}}})
            return out
        return {"status": {"initContainerStatuses": statuses(list(self.pod.get("initContainers") or [])),
                           "containerStatuses": statuses(list(self.pod["containers"]))}}

    def result(self) -> dict[str, Any]:
        """The run's result, read exactly as the operator reads it."""
        from huskies_agent.k8s import objects

        _code, message = objects.pod_termination(self.pod_status())
        return objects.parse_result(message)

    def kill(self, name: str) -> None:
        """What the kernel does to a container killed for memory: SIGKILL to every process in it."""
        proc = self.procs[name]
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(name)
            stop_process_group(proc)
        shutil.rmtree(self.root, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (wherever its session or process group went)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def pod_sim(job: dict[str, Any], secrets: Mapping[tuple[str, str], str],
            extra_env: Mapping[str, Mapping[str, str]] | None = None,
            configmaps: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[PodSim]:
    sim = PodSim(job, secrets, extra_env or {}, configmaps=configmaps or {})
    try:
        yield sim
    finally:
        sim.close()
