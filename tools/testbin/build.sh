#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok, helm) from Go modules into a cache outside the
# repository. Rebuilds only when a go.mod/go.sum here (or this script) changes.
#
# Usage: tools/testbin/build.sh            # builds if needed, prints the bin dir
#        TESTBIN_ONLY="etcd kube" tools/testbin/build.sh
#
# Fails loudly, naming the step, when anything does not build.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_VERSION="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$HERE/kube/go.mod")"
if [ -z "$KUBE_VERSION" ]; then
    KUBE_VERSION="$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$HERE/kube/go.mod")"
fi
KUBE_MINOR="$(echo "$KUBE_VERSION" | cut -d. -f2)"

key="$(cat "$HERE"/*/go.mod "$HERE"/*/go.sum "$HERE/build.sh" | sha256sum | cut -c1-16)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/testbin"
TESTBIN="${HUSKIES_TESTBIN:-$CACHE_ROOT/$key}"
mkdir -p "$TESTBIN"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

step() { echo "testbin: $*" >&2; }
fail() { echo "testbin: BUILD FAILED at step: $1" >&2; exit 1; }

build_kube() {
    local want=(kube-apiserver kube-controller-manager kube-scheduler)
    local missing=0
    for b in "${want[@]}"; do [ -x "$TESTBIN/$b" ] || missing=1; done
    [ "$missing" = 0 ] && return 0
    step "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION (slow: ~15-25 min cold on 2 cores)"
    local ldf="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldf="$ldf -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR"
        ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$HERE/kube" && go build -trimpath -ldflags "$ldf" -o "$TESTBIN/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler) || fail "go build kube ($KUBE_VERSION) in tools/testbin/kube"
}

build_etcd() {
    [ -x "$TESTBIN/etcd" ] && return 0
    step "building etcd"
    (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$TESTBIN/etcd" go.etcd.io/etcd/server/v3) \
        || fail "go build etcd in tools/testbin/etcd"
}

build_kwok() {
    [ -x "$TESTBIN/kwok" ] && return 0
    step "building kwok"
    (cd "$HERE/kwok" && go build -trimpath -ldflags "-s -w" -o "$TESTBIN/kwok" sigs.k8s.io/kwok/cmd/kwok) \
        || fail "go build kwok in tools/testbin/kwok"
}

build_helm() {
    [ -x "$TESTBIN/helm" ] && return 0
    step "building helm"
    local ldf="-s -w"
    for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        ldf="$ldf -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$KUBE_MINOR"
    done
    (cd "$HERE/helm" && go build -trimpath -ldflags "$ldf" -o "$TESTBIN/helm" helm.sh/helm/v3/cmd/helm) \
        || fail "go build helm in tools/testbin/helm"
}

command -v go >/dev/null || fail "find the go toolchain (install Go >= 1.26)"

# Small builds first so a broken module fails fast.
for t in ${TESTBIN_ONLY:-etcd kwok helm kube}; do
    "build_$t"
done

echo "$KUBE_VERSION" > "$TESTBIN/KUBE_VERSION"
echo "$TESTBIN"
