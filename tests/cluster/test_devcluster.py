"""The launcher itself: failure reporting, clean shutdown, signal handling, the PKI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from huskies_agent_dev.devcluster import ControlPlane, ControlPlaneError
from huskies_agent_dev.devcluster.controlplane import sweep_stale_etcd_dirs
from huskies_agent_dev.devcluster.pki import create_pki


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pki_client_cert_subject(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    cert = pki.client_cert("system:serviceaccount:ns:sa", ["team/a", "system:authenticated"])
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(cert.cert), "-noout", "-subject", "-nameopt", "RFC2253"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN=system:serviceaccount:ns:sa" in subject
    assert "O=team/a" in subject and "O=system:authenticated" in subject
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca.cert), str(cert.cert)], capture_output=True)
    assert verify.returncode == 0
    assert oct(cert.key.stat().st_mode & 0o777) == "0o600"


def test_early_exit_reports_log_tail_and_stops_everything(testbin: Path, tmp_path: Path) -> None:
    shm_before = set(Path("/dev/shm").glob("huskies-etcd-*"))
    plane = ControlPlane(testbin, tmp_path, extra_apiserver_args=["--no-such-flag=1"])
    with pytest.raises(ControlPlaneError) as err:
        plane.start()
    message = str(err.value)
    assert "kube-apiserver exited with code" in message
    assert "no-such-flag" in message  # the tail of its log names the problem
    assert not plane.processes
    assert not _listening(plane.ports["etcd"])
    assert set(Path("/dev/shm").glob("huskies-etcd-*")) <= shm_before  # etcd's data dir is gone


@pytest.mark.slow
def test_context_manager_leaves_nothing_behind(testbin: Path, tmp_path: Path) -> None:
    with ControlPlane(testbin, tmp_path, tier="apiserver") as plane:
        ports = dict(plane.ports)
        pids = [p.pid for p in plane.processes.values()]
        etcd_dir = plane._etcd_dir
        assert etcd_dir is not None and etcd_dir.is_dir()
        assert _listening(ports["apiserver"]) and _listening(ports["etcd"])
        assert set(plane.logs()) == {"etcd", "kube-apiserver"}
    assert not any(_listening(p) for p in ports.values())
    assert not any(_alive(pid) for pid in pids)
    assert not etcd_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_main_stops_components_when_signalled(testbin: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """`python -m huskies_agent_dev.devcluster` stops its components on SIGTERM, and they die with it on SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "huskies_agent_dev.devcluster", "--tier", "apiserver",
         "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HUSKIES_TESTBIN": str(testbin)},
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("export KUBECONFIG="):
                break
            assert time.monotonic() < deadline, "".join(lines)
        else:
            pytest.fail("devcluster exited early:\n" + "".join(lines))
        kids = _children(proc.pid)
        assert len(kids) == 2, kids  # etcd and kube-apiserver
        proc.send_signal(sig)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids)
        leftovers = list(Path("/dev/shm").glob(f"huskies-etcd-{proc.pid}-*"))
        if sig == signal.SIGTERM:
            assert proc.returncode == -signal.SIGTERM  # stopped its components, then died of the signal
            assert not leftovers
        else:
            # SIGKILL leaves etcd's in-memory data dir; the next start-up (or this) sweeps it.
            assert set(leftovers) <= set(sweep_stale_etcd_dirs())
            assert not list(Path("/dev/shm").glob(f"huskies-etcd-{proc.pid}-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
