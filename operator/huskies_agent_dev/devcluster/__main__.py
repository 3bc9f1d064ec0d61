"""``python -m huskies_agent_dev.devcluster``: run the local control plane until Ctrl-C."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from huskies_agent_dev.devcluster.controlplane import ControlPlane, ControlPlaneError
from huskies_agent_dev.devcluster.testbin import (
    APISERVER_BINARIES,
    CLUSTER_BINARIES,
    TestbinNotFound,
    find_testbin,
    repo_root,
)


def _default_run_dir() -> Path:
    root = repo_root()
    if root is not None:
        return root / ".run" / "devcluster"
    return Path(tempfile.mkdtemp(prefix="huskies-devcluster-"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m huskies_agent_dev.devcluster",
        description="Start a local Kubernetes control plane on loopback and keep it running until Ctrl-C.",
    )
    parser.add_argument("--tier", choices=["apiserver", "cluster"], default="cluster")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: <repo>/.run/devcluster")
    parser.add_argument("--nodes", type=int, default=2, help="fake kwok nodes (cluster tier)")
    parser.add_argument("--build", action="store_true", help="run tools/testbin/build.sh if needed")
    args = parser.parse_args(argv)

    try:
        need = CLUSTER_BINARIES if args.tier == "cluster" else APISERVER_BINARIES
        bin_dir = find_testbin(build=args.build, need=need)
    except TestbinNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    run_dir: Path = args.run_dir or _default_run_dir()
    if run_dir.exists():
        # A previous run's files (certs, kubeconfigs, logs) would be confusing: start clean.
        shutil.rmtree(run_dir)
    plane = ControlPlane(bin_dir, run_dir, tier=args.tier, nodes=args.nodes)
    print(f"starting the {args.tier} control plane in {run_dir} ...", flush=True)
    try:
        with plane:
            print(f"ready in {plane.startup_seconds['total']:.1f}s: {plane.server_url}")
            print(f"kubeconfig: {plane.kubeconfig_path}")
            print(f"logs:       {plane.log_dir}")
            print(f"\nexport KUBECONFIG={plane.kubeconfig_path}\n")
            print("Ctrl-C stops it.", flush=True)
            stopped = threading.Event()
            while not stopped.wait(2.0):
                plane.check_alive()
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
