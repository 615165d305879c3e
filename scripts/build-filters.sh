#!/usr/bin/env bash
# Build every filter component (shipped filters and test fixtures) into
# target/wasm32-wasip2/release/<name>.wasm, where conf/cascade.toml loads them.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
for manifest in filters/*/Cargo.toml tests/filters/*/Cargo.toml; do
    packages+=(-p "$(basename "$(dirname "$manifest")")")
done
cargo build --release --target wasm32-wasip2 "${packages[@]}"
