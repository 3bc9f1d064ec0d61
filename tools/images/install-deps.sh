#!/usr/bin/env bash
# Install the host tools that build and publish the images, from Debian's packages:
# buildah (builds the Dockerfile without a daemon), skopeo (copies images to a registry) and
# mmdebstrap (makes the Debian base image locally). Cheap when they are present.
#
# Usage: tools/images/install-deps.sh [command=package ...]   # more tools (a command or a path)
# Fails loudly, naming the step, when a tool is missing and cannot be installed.
set -euo pipefail

fail() { echo "images: INSTALL FAILED at step: $1" >&2; exit 1; }

# command -> Debian package
declare -A want=([buildah]=buildah [skopeo]=skopeo [mmdebstrap]=mmdebstrap)
for extra in "$@"; do want[${extra%%=*}]=${extra#*=}; done

missing=()
for cmd in "${!want[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${want[$cmd]}")
done
[ "${#missing[@]}" = 0 ] || mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
[ "${#missing[@]}" = 0 ] && exit 0

command -v apt-get >/dev/null || fail "install ${missing[*]} (no apt-get here: install them with your package manager)"
[ "$(id -u)" = 0 ] || fail "install ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
echo "images: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || fail "apt-get update"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || fail "apt-get install ${missing[*]}"
