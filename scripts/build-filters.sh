#!/usr/bin/env bash
# Build the filter components:
# - the filters we ship (filters/*) into target/wasm32-wasip2/release/<name>.wasm,
#   where conf/cascade.toml loads them;
# - the test fixtures (tests/filters/*), some deliberately invalid, into
#   target/fixtures/wasm32-wasip2/release, where no shipped config looks.
set -euo pipefail
cd "$(dirname "$0")/.."

packages() {
    for manifest in "$@"; do
        printf -- '-p %s ' "$(basename "$(dirname "$manifest")")"
    done
}
# shellcheck disable=SC2046
cargo build --release --target wasm32-wasip2 $(packages filters/*/Cargo.toml)
# shellcheck disable=SC2046
cargo build --release --target wasm32-wasip2 --target-dir target/fixtures $(packages tests/filters/*/Cargo.toml)
