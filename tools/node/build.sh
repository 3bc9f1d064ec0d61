#!/usr/bin/env bash
# Build the real node's own binaries into a cache outside the repository:
#   kubelet  from k8s.io/kubernetes (tools/node/kubelet: the control plane's version, a module of
#            its own so it never invalidates tools/testbin's cache)
#   pause    the sandbox process (tools/node/pause.c, static), packed as the OCI archive pause.oci.tar
# containerd, runc and the CNI plugins come from Debian's packages (tools/images/install-deps.sh
# containerd runc containernetworking-plugins).
#
# Usage: tools/node/build.sh                 # builds if needed, prints the bin dir last on stdout
#        tools/node/build.sh --cached-only   # prints it if built, else exits 3 (no build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_VERSION="$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$HERE/kubelet/go.mod")"
KUBE_MINOR="$(echo "$KUBE_VERSION" | cut -d. -f2)"
key="$(cat "$HERE/kubelet/go.mod" "$HERE/kubelet/go.sum" "$HERE/pause.c" "$HERE/build.sh" | sha256sum | cut -c1-16)"
OUT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/realnode/$key"

step() { echo "node: $*" >&2; }
fail() { echo "node: BUILD FAILED at step: $1" >&2; exit 1; }

if [ -x "$OUT/kubelet" ] && [ -f "$OUT/pause.oci.tar" ]; then echo "$OUT"; exit 0; fi
[ "${1:-}" = "--cached-only" ] && { step "not built: $OUT"; exit 3; }
[ -n "$KUBE_VERSION" ] || fail "read the k8s.io/kubernetes version from tools/node/kubelet/go.mod"
mkdir -p "$OUT" || fail "create $OUT"

if [ ! -x "$OUT/kubelet" ]; then
    command -v go >/dev/null || fail "find the go toolchain (install Go >= 1.25)"
    step "building kubelet $KUBE_VERSION (~2 min once the API server is built, far longer cold)"
    t0=$SECONDS
    ldf="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldf="$ldf -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR"
        ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$HERE/kubelet" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}" \
        go build -trimpath -ldflags "$ldf" -o "$OUT/kubelet.part" k8s.io/kubernetes/cmd/kubelet) \
        || fail "go build k8s.io/kubernetes/cmd/kubelet ($KUBE_VERSION) in tools/node/kubelet"
    mv "$OUT/kubelet.part" "$OUT/kubelet"
    step "kubelet built in $((SECONDS - t0)) s"
fi

if [ ! -f "$OUT/pause.oci.tar" ]; then
    command -v buildah >/dev/null || fail "find buildah (run tools/images/install-deps.sh)"
    step "building the sandbox image"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    gcc -static -Os -s -o "$work/pause" "$HERE/pause.c" || fail "gcc -static tools/node/pause.c"
    store=(--root "$work/root" --runroot "$work/run" --storage-driver vfs)
    ctr="$(buildah "${store[@]}" from scratch)" || fail "buildah from scratch (pause)"
    buildah "${store[@]}" copy "$ctr" "$work/pause" /pause >/dev/null || fail "buildah copy pause"
    buildah "${store[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr" || fail "buildah config pause"
    buildah "${store[@]}" commit --quiet --rm "$ctr" localhost/huskies-pause:latest >/dev/null || fail "buildah commit pause"
    buildah "${store[@]}" push --quiet localhost/huskies-pause:latest "oci-archive:$OUT/pause.oci.tar.part" \
        || fail "buildah push pause to an OCI archive"
    buildah "${store[@]}" rmi --all --force >/dev/null 2>&1 || true
    mv "$OUT/pause.oci.tar.part" "$OUT/pause.oci.tar"
fi
echo "$OUT"
