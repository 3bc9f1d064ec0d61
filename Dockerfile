# syntax=docker/dockerfile:1
#
# Two images from one file (see docs/runner.md):
#   docker build --target operator -t huskies-agent:0.1.0 .
#   docker build --target runner   -t huskies-agent-runner:0.1.0 .
#
# Everything comes from Debian 12 (Python 3.11 from Debian's packages), so `make test` builds this
# very file with buildah from a base image it makes locally with mmdebstrap under the same name
# (tools/images/build.sh): what you build and what the tests run differ only in where the base came
# from. The base is pinned by version and digest, the Claude Code CLI by version, the Python
# dependencies by version and hash (requirements/*.lock, `make lock`); bump them together.
# Nothing secret is baked in: tokens and keys reach the pods from Secrets at run time. Behind a
# TLS-intercepting proxy, hand its CA bundle to the two download steps (never to the images) with
# `--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt`.

ARG CLAUDE_CODE_VERSION=2.1.332
# The base by tag and by the digest of the multi-platform index Docker Official Images published for
# that tag (its build of 2026-09-18, as recorded in github.com/docker-library/repo-info,
# repos/debian/remote/12.15-slim.md). `make images` makes the base locally and passes that image's
# own digest here instead (tools/images/build.sh); a mirror can be named with --build-arg.
ARG DEBIAN_BASE=docker.io/library/debian:12.15-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

# ---------------------------------------------------------------- base: Debian + Python 3.11 + tini
FROM ${DEBIAN_BASE} AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- build: the Python package
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, LICENSE, requirements/ and operator/ without
# the development package operator/huskies_agent_dev, so the venv holds the runtime package alone.
COPY . .
# Dependencies only from the hash-pinned locks (nothing resolved, any changed file refused), then the
# package itself with no dependency resolution and no index; `pip check` proves the locks complete.
RUN --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt,required=false \
    python3 -m venv /opt/venv \
 && export PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/build.lock -r requirements/runtime.lock \
 && /opt/venv/bin/pip install --no-deps --no-index --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools wheel packaging \
 && /opt/venv/bin/huskies-agent version \
 && ! /opt/venv/bin/python -c "import huskies_agent_dev" 2>/dev/null

# ---------------------------------------------------------------- claude: the Claude Code CLI
# npm installs the CLI's native binary for the platform; only that binary reaches the runner
# (it needs glibc alone, no Node.js), so Debian's Node.js here only runs the installer.
FROM base AS claude
ARG CLAUDE_CODE_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nodejs npm \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt,required=false \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    npm install --global --omit=dev --no-audit --no-fund "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && cp "$(readlink -f "$(command -v claude)")" /opt/claude \
 && test "$(stat -c %s /opt/claude)" -gt 1000000 \
 && /opt/claude --version

# ---------------------------------------------------------------- runner: the build Job's image
# One image, three containers in the story pod (huskies_agent/contract.py): `run-story clone`
# and `run-story publish` as uid 10002 (huskies-git, holds the git Secret), `run-story agent`
# as uid 10001 (huskies, runs Claude Code). ssh needs a passwd entry for the uid it runs as.
FROM base AS runner
LABEL org.opencontainers.image.title="huskies-agent-runner" \
      org.opencontainers.image.description="Runs one claimed huskies story: clone, Claude Code, fenced push" \
      org.opencontainers.image.source="https://github.com/huskies/huskies-agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:12.15-slim"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates git openssh-client procps ripgrep \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 huskies \
 && useradd --uid 10001 --gid 10001 --home-dir /work/home --no-create-home --shell /usr/sbin/nologin huskies \
 && groupadd --gid 10002 huskies-git \
 && useradd --uid 10002 --gid 10002 --home-dir /var/run/huskies/publisher/home --no-create-home \
      --shell /usr/sbin/nologin huskies-git \
 && mkdir -p /work/home \
 && chown -R 10001:10001 /work
COPY --from=claude /opt/claude /usr/local/bin/claude
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUSKIES_WORKDIR=/work \
    HOME=/work/home \
    DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
WORKDIR /work
USER 10001:10001
# tini (PID 1) reaps what the agent's tools leave behind and forwards SIGTERM; a pod that sets
# only `args` keeps it.
ENTRYPOINT ["/usr/bin/tini", "--", "huskies-agent"]
CMD ["run-story"]

# ---------------------------------------------------------------- operator: the controller image
FROM base AS operator
LABEL org.opencontainers.image.title="huskies-agent" \
      org.opencontainers.image.description="Kubernetes operator that turns a cluster into build capacity for a huskies pipeline" \
      org.opencontainers.image.source="https://github.com/huskies/huskies-agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:12.15-slim"
RUN groupadd --gid 10001 huskies \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin huskies
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# The chart's Deployment sets `args` (global flags, then `operator ...`), replacing CMD only.
ENTRYPOINT ["/usr/bin/tini", "--", "huskies-agent"]
CMD ["operator"]
