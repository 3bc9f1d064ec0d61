#!/usr/bin/env bash
# Build both images (targets `operator` and `runner`) from the repository's own Dockerfile with
# buildah, without a daemon or a registry, into a cache outside the repository:
#   ${XDG_CACHE_HOME:-~/.cache}/huskies-agent/images/<key>/{operator,runner}.oci.tar + images.json
# <key> hashes every build input (Dockerfile, .dockerignore, the build context, this script), so
# an unchanged tree costs nothing. The Dockerfile's Debian base image is made here from Debian's
# packages with mmdebstrap and stored under the very name the Dockerfile pulls (cached by its own
# key): what users build and what the tests run differ only in where the base image came from.
#
# Usage: tools/images/build.sh                 # builds if needed; prints the image directory last
#        tools/images/build.sh --cached-only   # prints it if built, else exits 3 (no build)
# Storage: overlay (or vfs) driver, chroot isolation (no user namespaces or daemon needed). Fails
# loudly, naming the step. Progress, step times and image sizes go to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/huskies-agent/images"
TARGETS=(operator runner)
SUITE=bookworm
MIRROR="${HUSKIES_DEBIAN_MIRROR:-http://deb.debian.org}"

# buildah 1.28 ignores $STORAGE_DRIVER: the driver is passed explicitly. overlay needs a kernel with
# overlayfs (the CI machines have it); HUSKIES_BUILDAH_DRIVER=vfs works anywhere, slower and bigger.
DRIVER="${HUSKIES_BUILDAH_DRIVER:-overlay}"
STORE=(--root "$CACHE_ROOT/storage-$DRIVER" --runroot "$CACHE_ROOT/run-$DRIVER" --storage-driver "$DRIVER")
export BUILDAH_ISOLATION=chroot

step() { echo "images: $*" >&2; }
fail() { echo "images: BUILD FAILED at step: $1" >&2; exit 1; }
timed() {  # timed <label> <log> <command...>: run it with its output in <log>, report its wall time
    local t0=$SECONDS
    "${@:3}" >"$2" 2>&1 || { tail -40 "$2" >&2; return 1; }
    step "$1 took $((SECONDS - t0)) s"
}

for cmd in buildah mmdebstrap; do
    command -v "$cmd" >/dev/null || fail "find $cmd (run tools/images/install-deps.sh)"
done

# The Dockerfile names its base as `ARG DEBIAN_BASE=<name>:<tag>@sha256:<upstream digest>` and
# `FROM ${DEBIAN_BASE} AS base`. The base made here is stored under <name>:<tag>; the build gets
# that image's own digest as DEBIAN_BASE, so buildah uses exactly the image recorded in images.json.
grep -qx 'FROM ${DEBIAN_BASE} AS base' "$ROOT/Dockerfile" || fail "find 'FROM \${DEBIAN_BASE} AS base' in the Dockerfile"
BASE_REF="$(awk -F= '$1=="ARG DEBIAN_BASE" {print $2; exit}' "$ROOT/Dockerfile")"
BASE="${BASE_REF%@*}"
UPSTREAM_DIGEST="${BASE_REF#"$BASE"}"; UPSTREAM_DIGEST="${UPSTREAM_DIGEST#@}"
[ -n "$BASE" ] && [[ "$UPSTREAM_DIGEST" =~ ^sha256:[0-9a-f]{64}$ ]] \
    || fail "find 'ARG DEBIAN_BASE=<debian image>:<tag>@sha256:<digest>' in the Dockerfile"
case "$BASE" in
    *debian:12*) ;;
    *) fail "the base $BASE is not Debian 12 ($SUITE), the suite this script makes" ;;
esac

# ----------------------------------------------------------------------------- inputs and keys
context_files() {  # what .dockerignore lets into the context, in a stable order
    cd "$ROOT"
    for f in pyproject.toml README.md LICENSE; do [ -f "$f" ] && echo "$f"; done
    find requirements -type f | LC_ALL=C sort
    find operator -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info/*' | LC_ALL=C sort
}
base_key="$( { echo "$BASE $SUITE $MIRROR"; sed -n '/^make_base()/,/^}/p' "$HERE/build.sh"; } | sha256sum | cut -c1-16)"
key="$( { echo "$base_key"; cat "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$HERE/build.sh";
          context_files | while read -r f; do echo "== $f"; cat "$ROOT/$f"; done; } | sha256sum | cut -c1-16)"
OUT="$CACHE_ROOT/$key"

if [ -f "$OUT/images.json" ]; then
    step "cached: $OUT"
    echo "$OUT"
    exit 0
fi
[ "${1:-}" = "--cached-only" ] && { step "not built: $OUT"; exit 3; }

mkdir -p "$CACHE_ROOT" || fail "create $CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9 || fail "lock $CACHE_ROOT/.lock"
if [ -f "$OUT/images.json" ]; then echo "$OUT"; exit 0; fi  # built while we waited

# ----------------------------------------------------------------------------- the base image
make_base() {  # a debian:12-slim equivalent from Debian's packages (minbase, no docs or locales)
    mmdebstrap --variant=minbase --mode=root --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/resolv.conf' \
        "$SUITE" "$1" \
        "deb $MIRROR/debian $SUITE main" \
        "deb $MIRROR/debian $SUITE-updates main" \
        "deb $MIRROR/debian-security $SUITE-security main"
}
base_dir="$CACHE_ROOT/base-$base_key"
if [ ! -f "$base_dir/rootfs.tar" ]; then
    step "making the base image $BASE from Debian's packages (mmdebstrap, ~2 min)"
    mkdir -p "$base_dir"
    timed "mmdebstrap" "$base_dir/mmdebstrap.log" make_base "$base_dir/rootfs.tar.part" \
        || fail "mmdebstrap $SUITE (log: $base_dir/mmdebstrap.log)"
    mv "$base_dir/rootfs.tar.part" "$base_dir/rootfs.tar"
fi
if ! buildah "${STORE[@]}" inspect --type image --format '{{.OCIv1.Config.Labels}}' "$BASE" 2>/dev/null \
        | grep -q "huskies.base-key:$base_key"; then
    step "importing the base as $BASE"
    ctr="$(buildah "${STORE[@]}" from scratch)" || fail "buildah from scratch"
    buildah "${STORE[@]}" add "$ctr" "$base_dir/rootfs.tar" / >/dev/null || fail "buildah add rootfs.tar"
    buildah "${STORE[@]}" config --cmd bash --label "huskies.base-key=$base_key" "$ctr" || fail "buildah config base"
    buildah "${STORE[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null || fail "buildah commit $BASE"
fi

# The digest of the base image as stored now: the build resolves FROM by it (a changed or retagged
# image is refused by buildah), and images.json records it with the rootfs' own sha256.
base_digest="$(buildah "${STORE[@]}" images --digests --noheading --format '{{.Digest}}' "$BASE" | head -n1)"
[[ "$base_digest" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "read the digest of $BASE (got '$base_digest')"
rootfs_sha256="$(sha256sum "$base_dir/rootfs.tar" | cut -d' ' -f1)"
step "base $BASE@$base_digest (rootfs sha256:$rootfs_sha256; upstream pin $UPSTREAM_DIGEST)"

# ----------------------------------------------------------------------------- both targets
secret=()
ca="${HUSKIES_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] && secret=(--secret "id=ca-bundle,src=$ca")
work="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
declare -A image_ref
for target in "${TARGETS[@]}"; do
    ref="localhost/huskies-agent-$target:$key"
    image_ref[$target]="$ref"
    step "building target $target"
    timed "build $target" "$work/$target.log" buildah "${STORE[@]}" bud --layers --pull=never \
        --isolation chroot "${secret[@]}" --build-arg "DEBIAN_BASE=${BASE%:*}@$base_digest" \
        --target "$target" -t "$ref" -f "$ROOT/Dockerfile" "$ROOT" \
        || fail "buildah bud --target $target"
    buildah "${STORE[@]}" push --quiet "$ref" "oci-archive:$work/$target.oci.tar:$ref" >&2 \
        || fail "buildah push $target to an OCI archive"
done

{
    echo "{"
    echo "  \"key\": \"$key\", \"base\": \"$BASE\", \"base_digest\": \"$base_digest\","
    echo "  \"base_rootfs_sha256\": \"$rootfs_sha256\", \"upstream_digest\": \"$UPSTREAM_DIGEST\","
    echo "  \"debian_version\": \"$(tar -xOf "$base_dir/rootfs.tar" ./etc/debian_version)\","
    sep=""
    for target in "${TARGETS[@]}"; do
        size="$(buildah "${STORE[@]}" images --noheading --format '{{.Size}}' "${image_ref[$target]}" | head -n1)"
        bytes="$(stat -c %s "$work/$target.oci.tar")"
        echo "  $sep\"$target\": {\"ref\": \"${image_ref[$target]}\", \"archive\": \"$target.oci.tar\", \"archive_bytes\": $bytes, \"size\": \"$size\"}"
        sep=","
        step "image $target: $size in the store, $((bytes / 1000000)) MB as an OCI archive"
    done
    echo "}"
} >"$work/images.json" || fail "write images.json"
mkdir -p "$OUT.part" && mv "$work"/*.oci.tar "$work"/*.log "$OUT.part/" && mv "$work/images.json" "$OUT.part/" \
    && rm -rf "$OUT" && mv "$OUT.part" "$OUT" || fail "store the images in $OUT"
# Keep only this key's images (and the layers they share) in the store.
buildah "${STORE[@]}" images --noheading --format '{{.Name}}:{{.Tag}}' \
    | grep -E '^localhost/huskies-agent-(operator|runner):' | grep -v ":$key\$" \
    | xargs -r buildah "${STORE[@]}" rmi >/dev/null 2>&1 || true
buildah "${STORE[@]}" rmi --prune >/dev/null 2>&1 || true
echo "$OUT"
