#!/usr/bin/env bash
# Build Karpenter's kwok provider (sigs.k8s.io/karpenter/kwok) for the autoscaling test tier
# (tests/autoscale, bench/bench_autoscale.py). A build step of `make test` (`make karpenter`),
# cheap when cached.
#
# This script is the one place that knows where the build lives: everything else (the tests, the
# benchmarks) asks it, with --dir to look without building. The cache directory is keyed by a hash
# of module/go.mod, module/go.sum and this script, like tools/testbin's:
#     ${XDG_CACHE_HOME:-~/.cache}/huskies-agent/karpenter/<key>/
#         karpenter-kwok      the binary
#         crds/               the CRDs it needs, copied from the module (kwok/charts/crds/karpenter.sh_*.yaml
#                             and kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml)
#         VERSION             the sigs.k8s.io/karpenter version
#
# Usage: tools/karpenter/build.sh          # build if needed; prints the directory (last stdout line)
#        tools/karpenter/build.sh --dir    # print the directory, build nothing; exit 3 if it is incomplete
#        HUSKIES_KARPENTER_BIN_DIR=/some/dir ...   # use (or build into) that directory instead
#
# Slow when cold (~5 min and ~1 GB RAM on 2 cores). Fails loudly, naming the step.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/module"
BIN_NAME="karpenter-kwok"

step() { echo "karpenter: $*" >&2; }
fail() { echo "karpenter: BUILD FAILED at step: $1" >&2; exit 1; }

[ -f "$MOD/go.mod" ] && [ -f "$MOD/go.sum" ] || fail "find $MOD/go.mod and go.sum"

key="$(cat "$MOD/go.mod" "$MOD/go.sum" "$HERE/build.sh" | sha256sum | cut -c1-16)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/karpenter"
OUT="${HUSKIES_KARPENTER_BIN_DIR:-$CACHE_ROOT/$key}"

complete() { [ -x "$OUT/$BIN_NAME" ] && [ -d "$OUT/crds" ] && [ -f "$OUT/VERSION" ]; }

if [ "${1:-}" = "--dir" ]; then
    echo "$OUT"
    complete || exit 3
    exit 0
fi

VERSION="$(awk '$1=="sigs.k8s.io/karpenter" {print $2; exit}' "$MOD/go.mod")"
[ -n "$VERSION" ] || fail "read the sigs.k8s.io/karpenter version from $MOD/go.mod"
mkdir -p "$OUT" || fail "create $OUT"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
need_go() { command -v go >/dev/null || fail "find the go toolchain (install Go >= 1.24.6)"; }

if [ ! -x "$OUT/$BIN_NAME" ]; then
    need_go
    step "downloading sigs.k8s.io/karpenter $VERSION and its dependencies"
    (cd "$MOD" && go mod download) || fail "go mod download in tools/karpenter/module"
    step "building sigs.k8s.io/karpenter/kwok $VERSION (slow: ~5 min cold on 2 cores)"
    # -p 1 keeps peak memory near 1 GB on small machines; the build is link-bound anyway.
    (cd "$MOD" && nice go build -p 1 -trimpath -ldflags "-s -w" -o "$OUT/$BIN_NAME.tmp" sigs.k8s.io/karpenter/kwok) \
        || { rm -f "$OUT/$BIN_NAME.tmp"; fail "go build sigs.k8s.io/karpenter/kwok ($VERSION) in tools/karpenter/module"; }
    mv "$OUT/$BIN_NAME.tmp" "$OUT/$BIN_NAME" || fail "move $BIN_NAME into $OUT"
fi

if [ ! -d "$OUT/crds" ]; then
    need_go
    step "copying Karpenter's CRDs from the module"
    src="$(cd "$MOD" && go list -m -f '{{.Dir}}' sigs.k8s.io/karpenter)" \
        || fail "locate sigs.k8s.io/karpenter $VERSION in the module cache"
    rm -rf "$OUT/crds.tmp"
    mkdir -p "$OUT/crds.tmp" || fail "create $OUT/crds.tmp"
    for f in kwok/charts/crds/karpenter.sh_nodepools.yaml \
             kwok/charts/crds/karpenter.sh_nodeclaims.yaml \
             kwok/charts/crds/karpenter.sh_nodeoverlays.yaml \
             kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml; do
        [ -f "$src/$f" ] || fail "find $f in $src"
        cp "$src/$f" "$OUT/crds.tmp/" || fail "copy $f"
    done
    chmod u+w "$OUT"/crds.tmp/*.yaml
    mv "$OUT/crds.tmp" "$OUT/crds" || fail "move the CRDs into $OUT/crds"
fi

echo "$VERSION" > "$OUT/VERSION"
echo "$OUT"
