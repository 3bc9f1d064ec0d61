# huskies-agent developer entry points. `make test` is the single command CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test testbin karpenter claude-cli faketime images registry node lint venv run devcluster lock

# The venv is (re)installed when pyproject.toml changes.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# Control-plane binaries (etcd, kube-apiserver, kcm, scheduler, kwok, helm) into ~/.cache; cheap when cached.
testbin:
	bash tools/testbin/build.sh

# Karpenter's kwok provider (a real autoscaler for tests/autoscale) and its CRDs, from Go modules into
# ~/.cache; cheap when cached (~5 min cold). tools/karpenter/build.sh is the one place that knows where.
karpenter:
	bash tools/karpenter/build.sh >/dev/null

# The Claude Code CLI pinned in the Dockerfile, from npm into ~/.cache (tests/runner runs it); cheap when cached.
claude-cli:
	bash tools/claude-cli/install.sh >/dev/null

# libfaketime (apt package `faketime`) for the clock-skew fault tests; cheap when installed.
faketime:
	bash tools/faketime/install.sh >/dev/null

# Both Dockerfile targets built with buildah (the Debian base image made locally with mmdebstrap;
# buildah, skopeo and mmdebstrap from Debian's packages), and the test registry (go-containerregistry)
# into ~/.cache; cheap when cached. See tools/images/build.sh.
images:
	bash tools/images/install-deps.sh
	bash tools/images/build.sh

registry:
	bash tools/registry/build.sh

# The real node: containerd, runc and CNI plugins from Debian; kubelet (same Kubernetes version as the
# control plane, its own Go module) and the sandbox image built into ~/.cache. See tools/node/build.sh.
node: images
	bash tools/images/install-deps.sh containerd=containerd ctr=containerd runc=runc \
	    /usr/lib/cni/loopback=containernetworking-plugins nsenter=util-linux gcc=gcc
	bash tools/node/build.sh

test: venv testbin karpenter claude-cli faketime images registry node lint
	$(VENV)/bin/pytest

# Regenerate requirements/{runtime,build}.lock (hash-pinned, what the images install) from pyproject.toml
# with pip-tools for Python 3.11; tests/test_lockfiles.py fails until this is rerun after a dependency change.
lock:
	bash tools/lock/update.sh

# ruff, mypy (strict) and the import contracts of pyproject.toml (docs/architecture.md).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Only the autoscaling tier (tests/autoscale, part of `make test`) against a real Karpenter.
.PHONY: test-autoscale
test-autoscale: venv testbin karpenter
	$(VENV)/bin/pytest tests/autoscale -s $(ARGS)

# The local demo: control plane + rendezvous + operator; a sample story goes 2_current -> 3_qa.
# `make run ARGS=--keep` leaves everything running until Ctrl-C.
run: venv testbin
	$(VENV)/bin/huskies-agent --log-format text demo $(ARGS)

# Only the loopback control plane (development package huskies_agent_dev), until Ctrl-C.
devcluster: venv testbin
	$(VENV)/bin/python -m huskies_agent_dev.devcluster $(ARGS)
