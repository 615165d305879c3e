#!/usr/bin/env bash
# Install what building and testing Cascade needs on a Debian machine that has
# only Rust: cmake, make and gcc (Pingora builds zlib-ng; mimalloc and ring
# build C), curl (the HTTP/2 test), python3 (the test and bench scripts'
# helpers), rustfmt and clippy (the suite checks both), and the wasm32-wasip2
# target for the filters. Safe to run again; it skips what exists.
#
#   scripts/setup.sh [COMMAND ...]   # also install these Debian packages (named
#                                    # like their command) if the command is missing
set -euo pipefail

missing=()
for command in cmake make gcc curl python3 "$@"; do
    command -v "$command" >/dev/null || missing+=("$command")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
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
