#!/usr/bin/env bash
# The benchmark harness: one command, one machine, one run.
#
#   scripts/bench.sh            # load, cache, memory, swap, micro and instructions
#   DURATION=20 CONNECTIONS=64 ROUNDS=5 scripts/bench.sh load
#   ROWS="nginx bare none" scripts/bench.sh load   # only these load rows (a
#                               # ratio to nginx or none, when left out, is nan)
#   ROWS="nginx none noop-reused python python-reused" scripts/bench.sh load
#                               # rows python*: the filter in Python, asked for by name
#   RATE=4000 scripts/bench.sh load   # pace wrk to offer about 4,000 req/s
#                               # to every row (see RATE below)
#   PERF_ROW=load-chain scripts/bench.sh load   # also record a perf profile
#                               # (with call graphs) of the proxy during that
#                               # row (load-nginx, load-bare, load-none, load-none-cache-on, load-noop,
#                               # load-noop-reused, load-chain, load-chain-fresh,
#                               # cache-nginx, cache-cascade) into
#                               # target/bench/perf-<row>.data
#
# load:   wrk drives HTTP/1.1 keep-alive load, with fixed connections and a
#         fixed duration, at (a) nginx as a reverse proxy, and Cascade with
#         (b) no filters, (c) one no-op filter and (d) the demo chain, (c)
#         and (d) each with a fresh instance per request and with instances
#         reused (`reuse_instances`; the shipped demo route reuses); for
#         reference, Pingora alone (bare) and nginx adding the headers
#         Cascade adds (nginx-edge); and a subrequest to an auth service
#         before each request: nginx's auth_request (nginx-auth) against
#         the auth_request filter, reused (auth-request). All of
#         them sit in front of the same nginx origin serving a small static
#         body, and proxy and nginx get the same number of workers. The proxy's
#         CPU time comes from /proc, so the load generator does not skew it,
#         and each proxy runs on a core of its own (PIN). A filter row's
#         added CPU is the median of its differences from row (b), round by
#         round.
# memory: Cascade's resident memory with 1, 10 and 100 distinct modules.
# swap:   upload to first served request, for a ~100 KB and a >1 MB
#         component (the admin API, fresh versions so each one compiles),
#         and restart time with 100 and 1,000 cached modules.
# cache:  cache hits: nginx proxy_cache against Cascade's edge cache, both in
#         front of the same nginx origin whose response says max-age=3600.
# instructions: the load rows under valgrind's callgrind: user-space
#         instructions per request, a count that does not move with the noise
#         of a shared machine (see run_instructions).
#         KEEP_CALLGRIND=1 keeps each row's profile as
#         target/bench/callgrind-ROW.out, for callgrind_annotate.
# micro:  criterion: one full filter cycle (instantiate, on-request,
#         on-response, drop) per filter and for a chain of four, the same
#         with a reused instance (-reused), and one host call. Medians come
#         from criterion's estimates.
#
# Reports go to stdout and target/bench/*.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
WORKERS=${WORKERS:-1}
WARMUP=${WARMUP:-2}
# Each row of the load and cache parts is measured ROUNDS times, round-robin,
# and reported by its median run: drift on a shared machine hits every row
# alike, and one noisy run does not decide a ratio.
ROUNDS=${ROUNDS:-3}
# With PIN=1 (the default when there are more CPUs than WORKERS) every proxy
# under load runs on the last WORKERS of the CPUs this script may use, and
# wrk and the origin on the others, as a PoP pins its workers: the proxy's CPU
# time is then its own work, not also the cache misses of sharing a core with
# the load generator.
PIN=${PIN:-1}
# With RATE set, the load part paces wrk: each connection waits between its
# requests, so that all of them together offer about RATE req/s (a little
# less: the wait is whole milliseconds, and the response time adds to it).
# Every row then handles the same load, below saturation, as a PoP that is
# not busy does: the proxy idles between requests, and its CPU per request
# includes what cold caches cost it (docs/BENCHMARKS.md, session 10).
RATE=${RATE:-}
PATH="$PATH:/usr/sbin"   # nginx lives here on Debian
scripts/setup.sh nginx wrk valgrind
read -r PROXY_CPUS LOAD_CPUS < <(python3 - "$WORKERS" <<'CPUS'
import os, sys
cpus = sorted(os.sched_getaffinity(0))
workers = int(sys.argv[1])
if len(cpus) <= workers:
    print("- -")
else:
    print(",".join(map(str, cpus[-workers:])), ",".join(map(str, cpus[:-workers])))
CPUS
)
if [ "$PROXY_CPUS" = - ]; then PIN=0; fi
parts=("${@:-load cache memory swap micro instructions}")
parts=(${parts[*]})

if [ -n "${PERF_ROW:-}" ] && ! command -v perf >/dev/null; then
    echo "bench: PERF_ROW needs perf (Debian package linux-perf)" >&2
    exit 1
fi
NGINX=$(command -v nginx)

scripts/build-filters.sh
cargo build --release -p cascade --bin cascade --example bare_pingora
CASCADE=$root/target/release/cascade
BARE_PINGORA=$root/target/release/examples/bare_pingora

out=$root/target/bench
mkdir -p "$out"
work=$(mktemp -d)
# nginx workers run as an unprivileged user when started by root.
chmod 755 "$work"
pids=()
# SIGINT: a fast shutdown (Cascade's SIGTERM waits for requests in flight).
stop_all() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_all
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT [TRIES of 0.1 s, 300 by default]
    for _ in $(seq 1 "${2:-300}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}
# Pin processes (all their threads) to CPUS, when PIN=1. A process that has
# exited (nginx's cache loader, after a minute) is left out.
#   pin CPUS PID...
pin() {
    [ "$PIN" = 1 ] || return 0
    local cpus=$1 pid
    shift
    for pid in "$@"; do
        [ -d "/proc/$pid" ] || continue
        taskset -a -p -c "$cpus" "$pid" >/dev/null 2>&1 || true
    done
}
# wrk, on the load generator's cores when PIN=1.
load_wrk() {
    if [ "$PIN" = 1 ]; then taskset -c "$LOAD_CPUS" wrk "$@"; else wrk "$@"; fi
}
# "UTIME STIME" of processes and their threads, in clock ticks.
cpu_ticks() {
    local user=0 kernel=0 pid u k
    for pid in "$@"; do
        # nginx's cache loader exits a minute after start; its share is nil.
        [ -r "/proc/$pid/stat" ] || continue
        read -r u k < <(awk '{print $14, $15}' "/proc/$pid/stat")
        user=$((user + u)) kernel=$((kernel + k))
    done
    echo "$user $kernel"
}
# Drive URL with wrk (a warm-up, then the measured run) and print
# "req/s p50 p99 cpu-µs-per-request kernel-cpu-µs-per-request", the CPU read
# from /proc for PIDS.
# ROW names the row, for PERF_ROW.
#   measure ROW URL "PIDS" [extra wrk arguments...]
measure() {
    local row=$1 url=$2 pidset user_before kernel_before user_after kernel_after report requests
    read -r -a pidset <<<"$3"
    shift 3
    pin "$PROXY_CPUS" "${pidset[@]}"
    load_wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url" >/dev/null
    read -r user_before kernel_before <<<"$(cpu_ticks "${pidset[@]}")"
    local profiler=
    if [ "${PERF_ROW:-}" = "$row" ] && [ "${round:-1}" = 1 ]; then
        perf record -F 1000 --call-graph dwarf,16384 -o "$out/perf-$PERF_ROW.data" \
            -p "$(tr ' ' , <<<"${pidset[*]}")" -- sleep "$DURATION" 2>/dev/null &
        profiler=$!
    fi
    report=$(load_wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url")
    [ -z "$profiler" ] || wait "$profiler"
    read -r user_after kernel_after <<<"$(cpu_ticks "${pidset[@]}")"
    if grep -q "Non-2xx" <<<"$report"; then
        echo "bench: $url answered errors:" >&2
        echo "$report" >&2
        return 1
    fi
    requests=$(awk '/requests in/ {print $1}' <<<"$report")
    echo "$(awk '/Requests\/sec/ {print $2}' <<<"$report")" \
        "$(awk '$1 == "50%" {print $2}' <<<"$report")" \
        "$(awk '$1 == "99%" {print $2}' <<<"$report")" \
        "$(python3 -c "
per_request = 1e6 / $(getconf CLK_TCK) / $requests
user, kernel = ($user_after - $user_before) * per_request, ($kernel_after - $kernel_before) * per_request
print(f'{user + kernel:.1f} {kernel:.1f}')")"
}

# Measure every row of PART (in the array rows, with its URL in url[row] and
# its proxy's PIDs in pids_of[row]) ROUNDS times, round-robin. Leave each
# row's median run (by req/s) in the arrays rps, p50 and p99, the median of
# its CPU per request over the rounds in cpu, and that CPU round by round
# (comma-separated, in order) in cpu_rounds, for differences paired by round;
# the kernel's share of it likewise in kcpu and kcpu_rounds.
#   measure_rows PART [extra wrk arguments...]
measure_rows() {
    local part=$1 round row
    shift
    local -A runs=()
    for round in $(seq 1 "$ROUNDS"); do
        for row in "${rows[@]}"; do
            runs[$row]+="$(measure "$part-$row" "${url[$row]}" "${pids_of[$row]}" "$@");"
        done
    done
    for row in "${rows[@]}"; do
        read -r "rps[$row]" "p50[$row]" "p99[$row]" "cpu[$row]" "cpu_rounds[$row]" "kcpu[$row]" "kcpu_rounds[$row]" \
            <<<"$(python3 -c '
import statistics, sys
runs = [r.split() for r in sys.argv[1].split(";") if r.strip()]
median_run = sorted(runs, key=lambda r: float(r[0]))[len(runs) // 2]
out = median_run[:3]
for field in (3, 4):  # all CPU, then the kernel share
    cpus = [float(r[field]) for r in runs]
    out += [f"{statistics.median(cpus):.1f}", ",".join(f"{c:.1f}" for c in cpus)]
print(*out)' "${runs[$row]}")"
    done
}

# "MEDIAN (LOW to HIGH)" of ROW's CPU per request minus BASE's, round by
# round: both rows ran in each round, minutes apart at most, so drift on a
# shared machine cancels out of each difference. ROUNDS names the array of
# per-round figures: cpu_rounds (the default), or kcpu_rounds for the kernel.
#   paired_difference ROW BASE [ROUNDS]
paired_difference() {
    local -n rounds=${3:-cpu_rounds}
    python3 -c '
import statistics, sys
row, base = ([float(c) for c in a.split(",")] for a in sys.argv[1:3])
d = sorted(r - b for r, b in zip(row, base))
print(f"{statistics.median(d):.1f} µs (rounds: {d[0]:.1f} to {d[-1]:.1f})")' "${rounds[$1]}" "${rounds[$2]}"
}

machine() {
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"
    echo "- Memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
    echo "- $($NGINX -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(rustc --version)"
    if [ "$PIN" = 1 ]; then
        echo "- Pinned: each proxy on CPU $PROXY_CPUS; wrk and the origin on CPU $LOAD_CPUS (with one CPU for both, they may cap the lightest row's req/s: its CPU per request is still its own)"
    fi
    echo "- req/s, p50 and p99 come from each row's median round by req/s; CPU per request is the median over the rounds"
}

# Start a background process and remember it; its PID is left in $started.
start_nginx() { # $1 dir holding nginx.conf
    "$NGINX" -p "$1" -c "$1/nginx.conf" &
    started=$!
    pids+=("$started")
}
start_cascade() { # $1 dir holding cascade.toml; the log goes to $1/log
    # With PERF_ROW, perf names the guests' JIT-compiled functions too.
    RUST_LOG=warn CASCADE_PERF_MAP=${PERF_ROW:+1} "$CASCADE" serve --config "$1/cascade.toml" >"$1/log" 2>&1 &
    started=$!
    pids+=("$started")
}

nginx_conf() { # $1 dir, $2 body of http{}
    mkdir -p "$1/logs"
    cat >"$1/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
$2
}
EOF
}

# The origin every part uses: nginx serving BODY, with DIRECTIVES added to
# its location (a Cache-Control header, say).
start_origin() { # $1 dir, $2 port, $3 body, $4 directives
    mkdir -p "$1/www"
    printf '%s\n' "$3" >"$1/www/index.html"
    nginx_conf "$1" "    server { listen 127.0.0.1:$2; root $1/www; location / { $4 try_files /index.html =404; } }"
    start_nginx "$1"
}
# The nginx peer: a reverse proxy with keepalive to the origin, with
# HTTP_DIRECTIVES and LOCATION_DIRECTIVES added (a proxy_cache, say).
start_nginx_proxy() { # $1 dir, $2 port, $3 origin port, $4 http directives, $5 location directives
    nginx_proxy_conf "$@"
    start_nginx "$1"
}
nginx_proxy_conf() { # as start_nginx_proxy, without starting it
    nginx_conf "$1" "$4
    upstream origin { server 127.0.0.1:$3; keepalive 128; }
    server { listen 127.0.0.1:$2;
        location / { $5 proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
}

# What Cascade does to every request without filters, as nginx directives,
# for a reference row of nginx doing the same work: the request id both
# ways, CDN-Loop and Via appended to, X-Forwarded-For and -Proto upstream;
# Via and Cache-Status to the client (nginx's upstream read timeout is on by
# default, as Cascade's is). A row with them says how much of the gap to
# nginx is this work and how much the framework.
EDGE_HTTP_DIRECTIVES='
    map $http_cdn_loop $edge_cdn_loop { "" "bench"; default "$http_cdn_loop, bench"; }
    map $http_via $edge_via { "" "1.1 bench"; default "$http_via, 1.1 bench"; }'
EDGE_LOCATION_DIRECTIVES='proxy_set_header X-Request-Id $request_id; proxy_set_header CDN-Loop $edge_cdn_loop;
        proxy_set_header Via $edge_via; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme; add_header Via "1.1 bench" always;
        add_header Cache-Status "bench; fwd=bypass" always; add_header X-Request-Id $request_id always;'

# Cascade's config for the load rows (b) to (d): one process, one route per
# row, in front of the origin, with EXTRA appended to cascade.toml.
#   cascade_bench_config DIR PORT ORIGIN_PORT [EXTRA]
cascade_bench_config() {
    mkdir -p "$1/routes"
    # The Python filter's rows, only when asked for: loading it compiles
    # CPython's component (seconds) at every start.
    local modules=$root/target/wasm32-wasip2/release python_rows=""
    if [[ " ${ROWS:-} " == *" python"* ]]; then
        python_rows=1
        modules=$1/modules
        mkdir -p "$modules"
        ln -sf "$root"/target/wasm32-wasip2/release/*.wasm "$root/target/python/bot_block.wasm" "$modules/"
    fi
    cat >"$1/cascade.toml" <<EOF
routes = ["routes/*.toml"]
[server]
listen = "127.0.0.1:$2"
threads = $WORKERS
[modules]
dir = "$modules"
[upstreams.origin]
servers = ["127.0.0.1:$3"]
# The auth service of row auth-request: the origin, which answers 200.
[upstreams.authsvc]
servers = ["127.0.0.1:$3"]
# nginx's proxy_pass has no proxy_cache here, so Cascade does not cache
# either: both do the same job. Row "none-cache-on" shows what the edge cache
# (on by default) costs on a response it cannot keep.
[cache]
enabled = false

# The demo chain's policies, but one that never refuses: every request does
# the same work, and wrk sees no 429.
[rate_limits.demo]
rate = 100000000
burst = 100000000

[rate_limits.demo-gold]
rate = 100000000
burst = 100000000

[jwt.keysets.demo]
algorithms = ["HS256"]
secret_file = "$root/conf/demo-jwt-secret"
issuer = "cascade-demo"
audience = ["demo-api"]
${4:-}
EOF
    # The demo chain is the chain of conf/routes/demo.toml's first route.
    python3 - "$root/conf/routes/demo.toml" "$python_rows" >"$1/routes/bench.toml" <<'PY'
import sys, tomllib
demo = tomllib.load(open(sys.argv[1], "rb"))["route"][0]
def toml_value(v):
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace('\\', '\\\\').replace('"', '\\"') + '"'
    return str(v)
print('[[route]]\nname = "none"\npath_prefix = "/none"\nupstream = "origin"\n')
print('[[route]]\nname = "none-cache-on"\npath_prefix = "/none-cache-on"\nupstream = "origin"\ncache = { enabled = true }\n')
for name, reuse in [("noop", "false"), ("noop-reused", "true")]:
    print(f'[[route]]\nname = "{name}"\npath_prefix = "/{name}"\nupstream = "origin"\n'
          f'[[route.filters]]\nmodule = "noop"\nreuse_instances = {reuse}\n')
# The Python filter (filters/bot-block-python), which lets wrk through.
if sys.argv[2]:
    for name, reuse in [("python", "false"), ("python-reused", "true")]:
        print(f'[[route]]\nname = "{name}"\npath_prefix = "/{name}"\nupstream = "origin"\n'
              f'[[route.filters]]\nmodule = "bot_block"\nreuse_instances = {reuse}\n'
              'config = { deny_agents = ["BadBot"] }\n')
# A subrequest to the auth service before every request, as nginx-auth.
print('[[route]]\nname = "auth-request"\npath_prefix = "/auth-request"\nupstream = "origin"\n'
      '[[route.filters]]\nmodule = "auth_request"\nreuse_instances = true\noutbound = ["authsvc"]\n'
      'config = { upstream = "authsvc", path = "/", identity_headers = ["x-user"] }\n')
# The shipped demo chain, and the same with a fresh instance per request.
for name, fresh in [("chain", False), ("chain-fresh", True)]:
    print(f'[[route]]\nname = "{name}"\npath_prefix = "/{name}"\nupstream = "origin"')
    for f in demo.get("filters", []):
        print("[[route.filters]]")
        for k, v in f.items():
            if not (fresh and k == "reuse_instances"):
                print(f"{k} = {toml_value(v)}")
PY
}

# What each load row is, for the reports.
declare -A row_names=([nginx]="(a) nginx proxy_pass"
    [nginx-edge]="nginx proxy_pass adding the headers Cascade adds, for reference" [bare]="Pingora alone (examples/bare_pingora.rs), for reference"
    [none]="(b) Cascade, no filters"
    [none-cache-on]="(b) Cascade, no filters, edge cache on (uncacheable response)"
    [noop]="(c) Cascade, one no-op filter, fresh instance per request"
    [noop-reused]="(c) Cascade, one no-op filter, instances reused"
    [chain]="(d) Cascade, demo chain (instances reused, as shipped)"
    [chain-fresh]="(d) Cascade, demo chain, fresh instances per request"
    [python]="Cascade, one filter in Python (bot_block), fresh instance per request"
    [python-reused]="Cascade, one filter in Python (bot_block), instances reused"
    [nginx-auth]="nginx proxy_pass with auth_request: a subrequest to the origin first"
    [auth-request]="Cascade, auth_request filter (reused): a fetch to the origin first")

run_load() {
    local origin_port nginx_port cascade_port
    origin_port=$(free_port)
    nginx_port=$(free_port)
    cascade_port=$(free_port)

    # The origin: nginx serving a small static body.
    start_origin "$work/origin" "$origin_port" "hello from the origin" ""
    local origin_master=$started
    # (a) nginx as a reverse proxy with keepalive to the origin.
    start_nginx_proxy "$work/proxy" "$nginx_port" "$origin_port" "" ""
    local nginx_master=$started
    # nginx doing Cascade's work on every request, for reference.
    local edge_port
    edge_port=$(free_port)
    start_nginx_proxy "$work/edge" "$edge_port" "$origin_port" "$EDGE_HTTP_DIRECTIVES" "$EDGE_LOCATION_DIRECTIVES"
    local edge_master=$started
    # nginx asking an auth service (the origin) before each request.
    local nginx_auth_port
    nginx_auth_port=$(free_port)
    nginx_conf "$work/nginx-auth" "
    upstream origin { server 127.0.0.1:$origin_port; keepalive 128; }
    server { listen 127.0.0.1:$nginx_auth_port;
        location / { auth_request /auth; auth_request_set \$user \$upstream_http_x_user;
            proxy_set_header X-User \$user;
            proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
        location = /auth { internal; proxy_pass http://origin/; proxy_http_version 1.1;
            proxy_set_header Connection \"\"; proxy_pass_request_body off; proxy_set_header Content-Length \"\";
            proxy_set_header X-Original-URI \$request_uri; } }"
    start_nginx "$work/nginx-auth"
    local nginx_auth_master=$started

    # (b), (c), (d): one Cascade process, one route per row.
    cascade_bench_config "$work/cascade" "$cascade_port" "$origin_port"
    start_cascade "$work/cascade"
    local cascade_pid=$started
    # Pingora with none of Cascade's work: the floor under row (b).
    local bare_port
    bare_port=$(free_port)
    "$BARE_PINGORA" "127.0.0.1:$bare_port" "127.0.0.1:$origin_port" "$WORKERS" >"$work/bare.log" 2>&1 &
    local bare_pid=$!
    pids+=("$bare_pid")
    wait_port "$bare_port"

    wait_port "$origin_port"
    wait_port "$nginx_port"
    wait_port "$edge_port"
    wait_port "$nginx_auth_port"
    wait_port "$cascade_port"
    local nginx_pids=("$nginx_master" $(pgrep -P "$nginx_master"))
    local edge_pids=("$edge_master" $(pgrep -P "$edge_master"))
    local nginx_auth_pids=("$nginx_auth_master" $(pgrep -P "$nginx_auth_master"))
    pin "$LOAD_CPUS" "$origin_master" $(pgrep -P "$origin_master")
    # Every row gets the same request, with the token the demo chain's auth needs.
    local token
    token=$("$CASCADE" token --config "$root/conf/cascade.toml" --sub bench 2>/dev/null)
    local auth=(-H "authorization: Bearer $token")

    local pace=()
    if [ -n "$RATE" ]; then
        printf 'function delay()\n    return %d\nend\n' $((CONNECTIONS * 1000 / RATE)) >"$work/pace.lua"
        pace=(-s "$work/pace.lua")
    fi

    local -A rps p50 p99 cpu cpu_rounds kcpu kcpu_rounds url pids_of
    local rows=(${ROWS:-nginx nginx-edge bare none none-cache-on noop noop-reused chain chain-fresh nginx-auth auth-request}) row
    for row in "${rows[@]}"; do
        url[$row]="http://127.0.0.1:$cascade_port/$row"
        pids_of[$row]=$cascade_pid
    done
    url[nginx]="http://127.0.0.1:$nginx_port/"
    pids_of[nginx]="${nginx_pids[*]}"
    url[nginx-edge]="http://127.0.0.1:$edge_port/"
    pids_of[nginx-edge]="${edge_pids[*]}"
    url[bare]="http://127.0.0.1:$bare_port/"
    pids_of[bare]=$bare_pid
    url[nginx-auth]="http://127.0.0.1:$nginx_auth_port/"
    pids_of[nginx-auth]="${nginx_auth_pids[*]}"
    measure_rows load "${auth[@]}" "${pace[@]}"

    local paced=${RATE:+, paced to offer about $RATE req/s}
    {
        echo "### Load: HTTP/1.1 keep-alive, $CONNECTIONS connections, ${DURATION}s, $WORKERS worker(s) each, median of $ROUNDS rounds$paced"
        echo
        machine
        echo
        echo "| row | req/s | p50 | p99 | × nginx (a) | × no filters (b) | proxy CPU µs/req | of which kernel |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for row in "${rows[@]}"; do
            python3 -c "
# A ratio to a row that ROWS left out is nan.
a, b, r = ${rps[nginx]:-float('nan')}, ${rps[none]:-float('nan')}, ${rps[$row]}
print(f'| ${row_names[$row]} | {r:,.0f} | ${p50[$row]} | ${p99[$row]} | {r / a:.2f} | {r / b:.2f} | ${cpu[$row]} | ${kcpu[$row]} |')"
        done
        echo
        for row in noop noop-reused chain chain-fresh python python-reused auth-request; do
            [ -n "${cpu[$row]:-}" ] && [ -n "${cpu[none]:-}" ] || continue
            echo "- ${row_names[$row]} adds $(paired_difference "$row" none) of proxy CPU per request over no filters (the median of the rounds' differences), of which the kernel's $(paired_difference "$row" none kcpu_rounds)."
        done
        if [ -n "${rps[auth-request]:-}" ] && [ -n "${rps[nginx-auth]:-}" ]; then
            python3 -c "
r, n = ${rps[auth-request]}, ${rps[nginx-auth]}
print(f'- A subrequest before each request: Cascade\'s auth_request filter {r / n:.2f}x nginx\'s auth_request in req/s; proxy CPU ${cpu[auth-request]} against ${cpu[nginx-auth]} µs per request.')"
        fi
    } | tee "$out/load${RATE:+-paced}.md"
    stop_all
}

# Run a proxy under callgrind, then for each ROW=URL pair: drive URL with wrk
# and set count[ROW] to its instructions per request, counted between a zero
# and a dump of callgrind's counters, so start-up and warm-up are left out.
#   count_instructions PORT "ROW=URL ..." CMD...
count_instructions() {
    local port=$1 target row url report requests total dumps=0
    local -a targets
    read -r -a targets <<<"$2"
    shift 2
    local cg_dir
    cg_dir=$(mktemp -d "$work/callgrind.XXXX")
    RUST_LOG=warn valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$cg_dir/cg" "$@" \
        >"$cg_dir/log" 2>&1 &
    local vpid=$!
    pids+=("$vpid")
    fail() {
        echo "bench: $*; valgrind's log:" >&2
        tail -20 "$cg_dir/log" >&2
        return 1
    }
    # Start-up under valgrind is slow (Cascade deserializes its modules).
    wait_port "$port" 3000 || fail "$1 did not start under valgrind" || return 1
    for target in "${targets[@]}"; do
        row=${target%%=*} url=${target#*=}
        wrk -t1 -c8 -d3s "${auth[@]}" "$url" >/dev/null
        callgrind_control -z "$vpid" >/dev/null 2>&1 || fail "callgrind_control could not zero the counters" || return 1
        report=$(wrk -t1 -c8 -d"${DURATION}s" "${auth[@]}" "$url")
        callgrind_control -d "$vpid" >/dev/null 2>&1 || fail "callgrind_control could not dump the counters" || return 1
        dumps=$((dumps + 1))
        requests=$(awk '/requests in/ {print $1}' <<<"$report")
        if grep -q "Non-2xx" <<<"$report" || [ "${requests:-0}" -eq 0 ]; then
            fail "$url answered errors or nothing: $report" || return 1
        fi
        [ -s "$cg_dir/cg.$dumps" ] || fail "no callgrind dump $cg_dir/cg.$dumps" || return 1
        total=$(awk '/^(summary|totals):/ {t = $2} END {print t}' "$cg_dir/cg.$dumps")
        if [ "${KEEP_CALLGRIND:-}" = 1 ]; then cp "$cg_dir/cg.$dumps" "$out/callgrind-$row.out"; fi
        count[$row]=$((total / requests))
    done
    kill -INT "$vpid" 2>/dev/null
    wait "$vpid" 2>/dev/null || true
}

# instructions: the load rows again, each proxy under valgrind's callgrind,
# which counts the user-space instructions it executes per request. Unlike
# req/s and CPU time, the count does not move with whatever else a shared
# machine is doing, so the ratios repeat from run to run. It leaves out the
# kernel, whose work is about the same for nginx and Pingora (the same system
# calls per request); the load part shows the whole.
run_instructions() {
    local origin_port nginx_port bare_port cascade_port
    origin_port=$(free_port)
    nginx_port=$(free_port)
    bare_port=$(free_port)
    cascade_port=$(free_port)
    start_origin "$work/iorigin" "$origin_port" "hello from the origin" ""
    wait_port "$origin_port"
    local token
    token=$("$CASCADE" token --config "$root/conf/cascade.toml" --sub bench 2>/dev/null)
    local auth=(-H "authorization: Bearer $token")

    # nginx as one process, so callgrind sees the worker.
    nginx_proxy_conf "$work/iproxy" "$nginx_port" "$origin_port" "" ""
    sed -i '1i master_process off;' "$work/iproxy/nginx.conf"
    local -A count
    count_instructions "$nginx_port" "nginx=http://127.0.0.1:$nginx_port/" \
        "$NGINX" -p "$work/iproxy" -c "$work/iproxy/nginx.conf"
    count_instructions "$bare_port" "bare=http://127.0.0.1:$bare_port/" \
        "$BARE_PINGORA" "127.0.0.1:$bare_port" "127.0.0.1:$origin_port" "$WORKERS"

    local rows=() row cascade_rows=()
    for row in ${ROWS:-none noop noop-reused chain chain-fresh}; do
        case $row in nginx | bare) ;; *)
            rows+=("$row")
            cascade_rows+=("$row=http://127.0.0.1:$cascade_port/$row")
            ;;
        esac
    done
    if ((${#cascade_rows[@]})); then
        # valgrind cannot reserve address space for ten thousand instance
        # slots; a native start first fills the compiled-artifact cache, so
        # that nothing is compiled under valgrind.
        cascade_bench_config "$work/icascade" "$cascade_port" "$origin_port" $'[limits]\nmax_instances = 200'
        start_cascade "$work/icascade"
        wait_port "$cascade_port"
        kill -INT "$started"
        wait "$started" 2>/dev/null || true
        count_instructions "$cascade_port" "${cascade_rows[*]}" "$CASCADE" serve --config "$work/icascade/cascade.toml"
    fi
    {
        echo "### User-space instructions per request (callgrind), HTTP/1.1 keep-alive, 8 connections, ${DURATION}s per row"
        echo
        echo "| row | instructions per request | × nginx (a) | × no filters (b) |"
        echo "|---|---:|---:|---:|"
        for row in nginx bare "${rows[@]}"; do
            python3 -c "
a, b, r = ${count[nginx]}, ${count[none]:-0} or float('nan'), ${count[$row]}
print(f'| ${row_names[$row]} | {r:,} | {r / a:.2f} | {r / b:.2f} |')"
        done
    } | tee "$out/instructions.md"
    stop_all
}

run_cache() {
    local origin_port nginx_port cascade_port
    origin_port=$(free_port)
    nginx_port=$(free_port)
    cascade_port=$(free_port)
    mkdir -p "$work/ncache"
    start_origin "$work/corigin" "$origin_port" "hello from the origin, cacheable" 'add_header Cache-Control "max-age=3600";'
    local origin_master=$started
    # nginx proxy_cache, in memory as far as the OS page cache goes.
    start_nginx_proxy "$work/nproxy" "$nginx_port" "$origin_port" "    proxy_cache_path $work/ncache keys_zone=edge:10m;" \
        'proxy_cache edge; add_header X-Cache $upstream_cache_status;'
    local nginx_master=$started
    mkdir -p "$work/ccache/routes"
    printf 'routes = ["routes/*.toml"]\n[server]\nlisten = "127.0.0.1:%s"\nthreads = %s\n[modules]\ndir = "%s"\n[upstreams.origin]\nservers = ["127.0.0.1:%s"]\n' \
        "$cascade_port" "$WORKERS" "$work/ccache" "$origin_port" >"$work/ccache/cascade.toml"
    printf '[[route]]\nname = "hit"\nupstream = "origin"\n' >"$work/ccache/routes/r.toml"
    start_cascade "$work/ccache"
    local cascade_pid=$started
    wait_port "$origin_port"
    wait_port "$nginx_port"
    wait_port "$edge_port"
    wait_port "$cascade_port"
    local nginx_pids=("$nginx_master" $(pgrep -P "$nginx_master"))
    local edge_pids=("$edge_master" $(pgrep -P "$edge_master"))
    pin "$LOAD_CPUS" "$origin_master" $(pgrep -P "$origin_master")
    # Both must answer from the cache, or the comparison means nothing.
    curl -s -o /dev/null "http://127.0.0.1:$nginx_port/"
    curl -s -o /dev/null "http://127.0.0.1:$cascade_port/"
    curl -sI "http://127.0.0.1:$nginx_port/" | grep -qi "x-cache: HIT" || { echo "bench: nginx is not caching" >&2; exit 1; }
    curl -sI "http://127.0.0.1:$cascade_port/" | grep -qi "cache-status: .*; hit" || { echo "bench: Cascade is not caching" >&2; exit 1; }

    local -A rps p50 p99 cpu cpu_rounds kcpu kcpu_rounds
    local -A url=([nginx]="http://127.0.0.1:$nginx_port/" [cascade]="http://127.0.0.1:$cascade_port/")
    local -A pids_of=([nginx]="${nginx_pids[*]}" [cascade]=$cascade_pid)
    local rows=(nginx cascade) row
    measure_rows cache
    {
        echo "### Cache hits: HTTP/1.1 keep-alive, $CONNECTIONS connections, ${DURATION}s, $WORKERS worker(s) each, median of $ROUNDS rounds"
        echo
        echo "| row | req/s | p50 | p99 | × nginx proxy_cache | proxy CPU µs/req |"
        echo "|---|---:|---:|---:|---:|---:|"
        for row in nginx cascade; do
            python3 -c "
a, r = ${rps[nginx]}, ${rps[$row]}
name = {'nginx': 'nginx proxy_cache hit', 'cascade': 'Cascade edge cache hit'}['$row']
print(f'| {name} | {r:,.0f} | ${p50[$row]} | ${p99[$row]} | {r / a:.2f} | ${cpu[$row]} |')"
        done
    } | tee "$out/cache.md"
    stop_all
}

run_memory() {
    local noop="$root/target/wasm32-wasip2/release/noop.wasm"
    {
        echo "### Memory: resident set after start-up, by number of distinct modules"
        echo
        echo "| modules | RSS (MiB) |"
        echo "|---:|---:|"
    } >"$out/memory.md"
    declare -A rss
    for n in 1 10 100; do
        local dir="$work/mem$n" port
        port=$(free_port)
        mkdir -p "$dir/modules" "$dir/routes"
        # Distinct modules: the same filter with a different custom section,
        # so each is compiled and kept separately.
        python3 "$root/scripts/bench_modules.py" "$noop" "$dir/modules" "$n"
        printf 'routes = []\n[server]\nlisten = "127.0.0.1:%s"\nthreads = %s\n[modules]\ndir = "modules"\n' "$port" "$WORKERS" >"$dir/cascade.toml"
        start_cascade "$dir"
        wait_port "$port"
        sleep 1
        rss[$n]=$(awk '/VmRSS/ {print $2}' "/proc/$started/status")
        stop_all
        wait "$started" 2>/dev/null || true
        python3 -c "print(f'| $n | {${rss[$n]} / 1024:.1f} |')" >>"$out/memory.md"
    done
    python3 -c "print(f'\nEach additional module costs about {(${rss[100]} - ${rss[1]}) / 99 / 1024:.2f} MiB resident.')" >>"$out/memory.md"
    cat "$out/memory.md"
}

run_swap() {
    python3 - "$CASCADE" "$root/target/wasm32-wasip2/release/noop.wasm" "$work" <<'PY' | tee "$out/swap.md"
import os, socket, statistics, subprocess, sys, time, urllib.request
cascade, noop, work = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
token = "bench-token"

sys.path.insert(0, os.path.join(os.path.dirname(cascade), "../../scripts"))
import bench_modules

def distinct(tag, pad=0):
    return bench_modules.distinct(noop, tag, pad)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, proc, limit=600):
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if proc.poll() is not None:
            sys.exit(f"cascade exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.002)
    sys.exit("cascade did not start")

def start(dir, modules_dir, routes, port, admin_port):
    os.makedirs(f"{dir}/routes", exist_ok=True)
    open(f"{dir}/cascade.toml", "w").write(f"""routes = ["routes/*.toml"]
[server]
listen = "127.0.0.1:{port}"
threads = 1
[admin]
listen = "127.0.0.1:{admin_port}"
token_env = "BENCH_ADMIN_TOKEN"
max_upload_mb = 16
[modules]
dir = "{modules_dir}"
store = "{dir}/store"
[upstreams.origin]
servers = ["127.0.0.1:9"]
""")
    open(f"{dir}/routes/r.toml", "w").write(routes)
    env = dict(os.environ, BENCH_ADMIN_TOKEN=token, RUST_LOG="warn")
    return subprocess.Popen([cascade, "serve", "--config", f"{dir}/cascade.toml"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def call(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method, headers={"authorization": f"Bearer {token}"})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code

# Upload to first served request. The route answers from the filter itself
# (the origin is a closed port, so a served request is a 502 from the proxy
# after the filter ran); what is timed is PUT, then the first request.
d = f"{work}/swap"; os.makedirs(f"{d}/modules", exist_ok=True)
open(f"{d}/modules/bench.wasm", "wb").write(noop)
port, admin = free_port(), free_port()
proc = start(d, f"{d}/modules", '[[route]]\nname = "r"\nupstream = "origin"\n[[route.filters]]\nmodule = "bench"\n', port, admin)
wait_port(port, proc); wait_port(admin, proc)
print("### Swap: upload to first served request, and restart with cached modules\n")
print("| component | size | median | min | max |")
print("|---|---:|---:|---:|---:|")
for label, pad in [("noop, ~100 KB", 0), ("noop padded past 1 MB", 1_100_000)]:
    times = []
    for i in range(15):
        body = distinct(f"{label}-{i}", pad)
        t0 = time.perf_counter()
        assert call("PUT", f"http://127.0.0.1:{admin}/modules/bench", body) == 200
        call("GET", f"http://127.0.0.1:{port}/")
        times.append((time.perf_counter() - t0) * 1000)
    print(f"| {label} | {len(body) / 1024:.0f} KiB | {statistics.median(times):.1f} ms | {min(times):.1f} ms | {max(times):.1f} ms |")
proc.kill(); proc.wait()

print("\n| cached modules | restart to listening (median of 3) |")
print("|---:|---:|")
for n in [100, 1000]:
    d = f"{work}/restart{n}"; os.makedirs(f"{d}/modules", exist_ok=True)
    for i in range(n):
        open(f"{d}/modules/m{i}.wasm", "wb").write(distinct(f"restart-{i}"))
    port, admin = free_port(), free_port()
    proc = start(d, f"{d}/modules", "", port, admin)   # first start compiles and caches
    wait_port(port, proc); proc.kill(); proc.wait()
    times = []
    for _ in range(3):
        proc = start(d, f"{d}/modules", "", port, admin)
        times.append(wait_port(port, proc)); proc.kill(); proc.wait()
    print(f"| {n} | {statistics.median(times) * 1000:.0f} ms |")
PY
}

run_micro() {
    cargo bench -p cascade --bench filter_cycle -- --noplot >"$out/criterion.log" 2>&1 || {
        cat "$out/criterion.log"
        exit 1
    }
    {
        echo "### Micro: one full filter cycle (instantiate, on-request, on-response, drop)"
        echo
        echo "| benchmark | median | 95% CI of the mean |"
        echo "|---|---:|---:|"
        python3 - "$root/target/criterion" <<'PY'
import json, os, sys
base = sys.argv[1]
def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"
for group in ["cycle", "host-call"]:
    gdir = os.path.join(base, group)
    if not os.path.isdir(gdir):
        continue
    for bench in sorted(os.listdir(gdir)):
        path = os.path.join(gdir, bench, "new", "estimates.json")
        if not os.path.exists(path):
            continue
        est = json.load(open(path))
        med = est["median"]["point_estimate"]
        lo, hi = est["mean"]["confidence_interval"]["lower_bound"], est["mean"]["confidence_interval"]["upper_bound"]
        note = ""
        if bench == "header-x1000":
            note = f" (one call: {fmt(med / 1000)})"
        print(f"| {group}/{bench} | {fmt(med)}{note} | {fmt(lo)} – {fmt(hi)} |")
PY
    } | tee "$out/micro.md"
}

for part in "${parts[@]}"; do
    case $part in
    load) run_load ;;
    cache) run_cache ;;
    memory) run_memory ;;
    swap) run_swap ;;
    micro) run_micro ;;
    instructions) run_instructions ;;
    *) echo "bench: unknown part $part (load, cache, memory, swap, micro, instructions)" >&2; exit 2 ;;
    esac
done
