#!/usr/bin/env bash
# Run the whole suite: formatting, lints (host and guests), the guest unit
# tests against the mock host, and the end-to-end tests through the real proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-filters.sh

guests=()
for manifest in guest-sdk/Cargo.toml filters/*/Cargo.toml tests/filters/*/Cargo.toml; do
    guests+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --target wasm32-wasip2 "${guests[@]}" -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite: cargo prints one per test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "suite: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
