#!/usr/bin/env bash
# Install the Claude Code CLI for the runner tests, pinned to the version the Dockerfile
# builds into the runner image, into a cache outside the repository:
#   ${XDG_CACHE_HOME:-~/.cache}/huskies-agent/claude-code/<key>/claude
# <key> hashes the pinned version, the platform and this script, so bumping the
# Dockerfile's CLAUDE_CODE_VERSION installs the new CLI next to the old one. Cheap when
# cached (no network). Prints the binary's path on stdout; fails loudly, naming the step.
#
# Usage: tools/claude-cli/install.sh
#        HUSKIES_CLAUDE_CLI=/path/to/claude tools/claude-cli/install.sh   # use a given binary
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

step() { echo "claude-cli: $*" >&2; }
fail() { echo "claude-cli: INSTALL FAILED at step: $1" >&2; exit 1; }

VERSION="$(sed -n 's/^ARG CLAUDE_CODE_VERSION=\([0-9][0-9A-Za-z.+-]*\)$/\1/p' "$ROOT/Dockerfile" | head -n1)"
[ -n "$VERSION" ] || fail "read ARG CLAUDE_CODE_VERSION=<version> from the Dockerfile"

check() {  # check <binary>: it runs and reports the pinned version
    local out
    out="$("$1" --version 2>&1)" || fail "run '$1 --version' (output: $out)"
    case "$out" in
        "$VERSION"*) ;;
        *) fail "'$1 --version' printed '$out', expected version $VERSION (the Dockerfile's pin)" ;;
    esac
}

if [ -n "${HUSKIES_CLAUDE_CLI:-}" ]; then
    [ -x "$HUSKIES_CLAUDE_CLI" ] || fail "HUSKIES_CLAUDE_CLI=$HUSKIES_CLAUDE_CLI is not an executable file"
    check "$HUSKIES_CLAUDE_CLI"
    echo "$HUSKIES_CLAUDE_CLI"
    exit 0
fi

key="$( { echo "$VERSION"; uname -sm; cat "$HERE/install.sh"; } | sha256sum | cut -c1-16)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/claude-code"
DEST="$CACHE_ROOT/$key"

if [ -x "$DEST/claude" ] && [ -f "$DEST/VERSION" ]; then
    echo "$DEST/claude"
    exit 0
fi

command -v npm >/dev/null || fail "find npm (Node.js) to install @anthropic-ai/claude-code@$VERSION"
mkdir -p "$CACHE_ROOT" || fail "create $CACHE_ROOT"
work="$(mktemp -d "$CACHE_ROOT/.install.XXXXXX")" || fail "create a temporary directory in $CACHE_ROOT"
trap 'rm -rf "$work"' EXIT

step "installing @anthropic-ai/claude-code@$VERSION from npm (about 400 MB, once)"
npm install --prefix "$work/npm" --no-save --no-audit --no-fund --omit=dev --loglevel=error \
    "@anthropic-ai/claude-code@$VERSION" >&2 \
    || fail "npm install @anthropic-ai/claude-code@$VERSION"

link="$work/npm/node_modules/.bin/claude"
[ -e "$link" ] || fail "find node_modules/.bin/claude after npm install"
bin="$(readlink -f "$link")" || fail "resolve $link"
size="$(stat -c %s "$bin")" || fail "stat $bin"
# The package ships a native binary per platform; a small file means a JS shim or a failed postinstall.
[ "$size" -gt 1000000 ] || fail "check that $bin is the native CLI (it has only $size bytes)"

mkdir -p "$work/out" || fail "create $work/out"
cp "$bin" "$work/out/claude" && chmod 0755 "$work/out/claude" || fail "copy the CLI binary"
check "$work/out/claude"
echo "$VERSION" > "$work/out/VERSION" || fail "write VERSION"
rm -rf "$DEST"
mv "$work/out" "$DEST" || fail "move the CLI into $DEST"
step "installed $DEST/claude"
echo "$DEST/claude"
