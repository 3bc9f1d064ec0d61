#!/usr/bin/env bash
# Install libfaketime (Debian/Ubuntu package `faketime`) for the clock-skew fault tests, which
# LD_PRELOAD it into operator processes. Cheap when already installed; prints the library path.
#
# Usage: tools/faketime/install.sh
#
# Fails loudly, naming the step, when it cannot be installed.
set -euo pipefail

find_lib() {
    local candidate
    for candidate in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 \
                     /usr/local/lib/faketime/libfaketime.so.1; do
        if [ -f "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

fail() { echo "faketime: INSTALL FAILED at step: $1" >&2; exit 1; }

if lib="$(find_lib)"; then
    echo "$lib"
    exit 0
fi

command -v apt-get >/dev/null || fail "find apt-get (install libfaketime with your package manager)"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "become root (run as root or install sudo)"
    SUDO="sudo"
fi
echo "faketime: installing the faketime package" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends faketime >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends faketime >&2; } \
    || fail "apt-get install faketime"
lib="$(find_lib)" || fail "find libfaketime.so.1 after installing the package"
echo "$lib"
