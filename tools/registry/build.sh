#!/usr/bin/env bash
# Build the test registry: go-containerregistry's `crane` (its `crane registry serve` is a real OCI
# distribution registry) from the Go module in tools/registry/crane into a cache outside the
# repository. A module and cache key of its own, so it never invalidates the control plane's.
#
# Usage: tools/registry/build.sh                 # builds if needed, prints the bin dir last on stdout
#        tools/registry/build.sh --cached-only   # prints it if built, else exits 3 (no build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$HERE"/*/go.mod "$HERE"/*/go.sum "$HERE/build.sh" | sha256sum | cut -c1-16)"
OUT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/registry/$key"

fail() { echo "registry: BUILD FAILED at step: $1" >&2; exit 1; }

if [ ! -x "$OUT/crane" ] && [ "${1:-}" = "--cached-only" ]; then
    echo "registry: not built: $OUT" >&2
    exit 3
fi
if [ ! -x "$OUT/crane" ]; then
    command -v go >/dev/null || fail "find the go toolchain (install Go >= 1.25)"
    mkdir -p "$OUT" || fail "create $OUT"
    echo "registry: building crane (go-containerregistry) into $OUT" >&2
    t0=$SECONDS
    (cd "$HERE/crane" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}" go build -trimpath -ldflags "-s -w" \
        -o "$OUT/crane.part" github.com/google/go-containerregistry/cmd/crane) \
        || fail "go build github.com/google/go-containerregistry/cmd/crane in tools/registry/crane"
    mv "$OUT/crane.part" "$OUT/crane"
    echo "registry: crane built in $((SECONDS - t0)) s" >&2
fi
echo "$OUT"
