# syntax=docker/dockerfile:1
#
# Two images from one file (see docs/runner.md):
#   docker build --target operator -t huskies-agent:0.1.0 .
#   docker build --target runner   -t huskies-agent-runner:0.1.0 .
#
# Base images and the Claude Code CLI are pinned by version; bump them together.
# Nothing secret is baked in: tokens and keys reach the pods from Secrets at run time.

ARG CLAUDE_CODE_VERSION=2.1.332

# ---------------------------------------------------------------- build: the Python package
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and operator/ without the development
# package operator/huskies_agent_dev, so the venv holds the runtime package huskies_agent alone.
COPY . .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/huskies-agent version \
 && ! /opt/venv/bin/python -c "import huskies_agent_dev" 2>/dev/null

# ---------------------------------------------------------------- claude: Node.js + Claude Code CLI
# Claude Code needs Node.js >= 22; its npm package installs a native binary for the platform.
FROM node:22.16.0-bookworm-slim AS claude
ARG CLAUDE_CODE_VERSION
RUN npm install --global --omit=dev "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && npm cache clean --force \
 && cp "$(readlink -f "$(command -v claude)")" /opt/claude \
 && test "$(stat -c %s /opt/claude)" -gt 1000000 \
 && /opt/claude --version

# ---------------------------------------------------------------- runner: the build Job's image
# One image, three containers in the story pod (huskies_agent/contract.py): `run-story clone`
# and `run-story publish` as uid 10002 (huskies-git, holds the git Secret), `run-story agent`
# as uid 10001 (huskies, runs Claude Code). ssh needs a passwd entry for the uid it runs as.
FROM python:3.11.13-slim-bookworm AS runner
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates git openssh-client libstdc++6 procps ripgrep \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 huskies \
 && useradd --uid 10001 --gid 10001 --home-dir /work/home --no-create-home --shell /usr/sbin/nologin huskies \
 && groupadd --gid 10002 huskies-git \
 && useradd --uid 10002 --gid 10002 --home-dir /var/run/huskies/publisher/home --no-create-home \
      --shell /usr/sbin/nologin huskies-git \
 && mkdir -p /work/home \
 && chown -R 10001:10001 /work
COPY --from=claude /usr/local/bin/node /usr/local/bin/node
COPY --from=claude /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
COPY --from=claude /opt/claude /usr/local/bin/claude
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version
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
ENTRYPOINT ["huskies-agent", "run-story"]

# ---------------------------------------------------------------- operator: the controller image
FROM python:3.11.13-slim-bookworm AS operator
RUN groupadd --gid 10001 huskies \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin huskies
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["huskies-agent", "operator"]
