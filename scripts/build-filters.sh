#!/usr/bin/env bash
# Build the filter components:
# - the filters we ship (filters/*) into target/wasm32-wasip2/release/<name>.wasm,
#   where conf/cascade.toml loads them;
# - the test fixtures (tests/filters/*), some deliberately invalid, into
#   target/fixtures/wasm32-wasip2/release, where no shipped config looks;
# - the filters written in Python (filters/<name>-python/<name>.py, with '-'
#   in the name as '_' in the file's) into
#   target/python/<module>.wasm, with componentize-py (scripts/setup.sh
#   installs it). They are uploaded through the admin API, not loaded at start:
#   each carries CPython, and a first compile takes seconds.
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

# No __pycache__ beside the sources: componentize-py imports the app to build it.
export PYTHONDONTWRITEBYTECODE=1
componentize_py=target/guest-tools/python/bin/componentize-py
if [ ! -x "$componentize_py" ]; then
    echo "build-filters: $componentize_py is missing: run scripts/setup.sh" >&2
    exit 1
fi
mkdir -p target/python
# One app per directory: filters/bot-block-python/bot_block.py is module
# bot_block (other .py files there are its helpers).
for dir in filters/*-python; do
    module=$(basename "$dir" -python | tr - _)
    "$componentize_py" --wit-path wit --world filter componentize \
        --python-path "$dir" "$module" --output "target/python/$module.wasm" >/dev/null
done
