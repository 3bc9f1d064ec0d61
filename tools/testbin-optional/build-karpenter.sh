#!/usr/bin/env bash
# Build Karpenter's kwok provider (sigs.k8s.io/karpenter/kwok) for the opt-in autoscaling test tier
# (tests/autoscale, `make test-autoscale`). Optional: `make test` never needs it.
#
# The binary goes to its own cache directory, keyed by this directory's karpenter/go.mod,
# karpenter/go.sum and this script, so it never touches or invalidates tools/testbin's cache:
#     ${XDG_CACHE_HOME:-~/.cache}/huskies-agent/testbin-optional/karpenter-<key>/karpenter-kwok
# The CRDs it needs are copied next to it (from the module: kwok/charts/crds/karpenter.sh_*.yaml and
# kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml), and the module version into VERSION.
#
# Usage: tools/testbin-optional/build-karpenter.sh     # builds if needed, prints the directory
#        HUSKIES_KARPENTER_BIN_DIR=/some/dir ...        # build into / use that directory instead
#
# Slow when cold (~5 min and ~1 GB RAM on 2 cores). Fails loudly, naming the step.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/karpenter"
BIN_NAME="karpenter-kwok"

step() { echo "testbin-optional: $*" >&2; }
fail() { echo "testbin-optional: BUILD FAILED at step: $1" >&2; exit 1; }

need_go() { command -v go >/dev/null || fail "find the go toolchain (install Go >= 1.24.6)"; }
[ -f "$MOD/go.mod" ] && [ -f "$MOD/go.sum" ] || fail "find $MOD/go.mod and go.sum"

VERSION="$(awk '$1=="sigs.k8s.io/karpenter" {print $2; exit}' "$MOD/go.mod")"
[ -n "$VERSION" ] || fail "read the sigs.k8s.io/karpenter version from $MOD/go.mod"

key="$(cat "$MOD/go.mod" "$MOD/go.sum" "$HERE/build-karpenter.sh" | sha256sum | cut -c1-16)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/testbin-optional"
OUT="${HUSKIES_KARPENTER_BIN_DIR:-$CACHE_ROOT/karpenter-$key}"
mkdir -p "$OUT" || fail "create $OUT"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

if [ ! -x "$OUT/$BIN_NAME" ]; then
    need_go
    step "downloading sigs.k8s.io/karpenter $VERSION and its dependencies"
    (cd "$MOD" && go mod download) || fail "go mod download in tools/testbin-optional/karpenter"
    step "building sigs.k8s.io/karpenter/kwok $VERSION (slow: ~5 min cold on 2 cores)"
    # -p 1 keeps peak memory near 1 GB on small machines; the build is link-bound anyway.
    (cd "$MOD" && nice go build -p 1 -trimpath -ldflags "-s -w" -o "$OUT/$BIN_NAME.tmp" sigs.k8s.io/karpenter/kwok) \
        || { rm -f "$OUT/$BIN_NAME.tmp"; fail "go build sigs.k8s.io/karpenter/kwok ($VERSION) in tools/testbin-optional/karpenter"; }
    mv "$OUT/$BIN_NAME.tmp" "$OUT/$BIN_NAME" || fail "move $BIN_NAME into $OUT"
fi

if [ ! -d "$OUT/crds" ]; then
    need_go
    step "copying Karpenter's CRDs from the module"
    src="$(cd "$MOD" && go list -m -f '{{.Dir}}' sigs.k8s.io/karpenter)" \
        || fail "locate sigs.k8s.io/karpenter $VERSION in the module cache"
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
