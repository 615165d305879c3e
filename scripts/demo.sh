#!/usr/bin/env bash
# Build everything and run Cascade on its default configuration
# (conf/cascade.toml) in front of the demo origin. Then, in another shell:
#   curl -i localhost:8080/api/users
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-filters.sh
cargo build -p cascade

# The admin API needs a token; the demo has one unless you set your own.
export CASCADE_ADMIN_TOKEN=${CASCADE_ADMIN_TOKEN:-demo-admin-token}
echo "demo: admin API token: $CASCADE_ADMIN_TOKEN (export it in another shell for 'cascade module ...')"
if [ -s var/modules/state.json ] && grep -q '"active"' var/modules/state.json; then
    echo "demo: var/modules holds uploaded modules, which win over conf/modules; remove var/modules to start fresh"
fi

./target/debug/cascade demo-origin --listen 127.0.0.1:9000 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
exec_status=0
./target/debug/cascade serve --config conf/cascade.toml || exec_status=$?
exit $exec_status
