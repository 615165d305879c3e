#!/usr/bin/env bash
# Install what building and testing Cascade needs on a Debian machine that has
# only Rust: cmake, make and gcc (Pingora builds zlib-ng; mimalloc and ring
# build C), curl (the HTTP/2 test), python3 (the test and bench scripts'
# helpers), rustfmt and clippy (the suite checks both), the wasm32-wasip2
# target for the filters, and componentize-py (in a virtualenv under
# target/guest-tools) for the filter written in Python. Safe to run again; it
# skips what exists.
#
#   scripts/setup.sh [COMMAND ...]   # also install these Debian packages (named
#                                    # like their command) if the command is missing
set -euo pipefail
cd "$(dirname "$0")/.."

# Install Debian packages, as root or through sudo.
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
for command in cmake make gcc curl python3 "$@"; do
    command -v "$command" >/dev/null || missing+=("$command")
done
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        echo "setup: adding the $component component"
        rustup component add "$component"
    fi
done

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

# componentize-py builds Python filters (filters/*-python). It comes from PyPI
# as one wheel that carries CPython for WASI; its version is pinned because the
# component it builds embeds that CPython.
COMPONENTIZE_PY_VERSION=0.25.1
venv=target/guest-tools/python
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    echo "setup: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 keeps venv (and the pip it brings) in a package of its own.
        apt_install python3-venv
        python3 -m venv --clear "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
