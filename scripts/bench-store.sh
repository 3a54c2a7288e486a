#!/usr/bin/env bash
# Durable ingest side by side: caretaker-loadgen against one collector on the embedded store,
# and against one and two collectors on a private PostgreSQL cluster. For BENCHMARKS.md.
#
#   scripts/bench-store.sh [embedded|pg1|pg2 ...]     (default: all three)
#
# Uses release binaries from $BIN (default target/release; build them with
# `cargo build --release -p caretaker-collector -p caretaker-tests --bins`). AGENTS and EVENTS
# set the load (default 100 x 10000), BATCH and WINDOW what each agent keeps in flight. Prints one line per case: rate, p99 ack, the collectors'
# peak RSS, the store's disk use (the data directory, or pg_database_size) against the events'
# own size as JSON, and the time a restarted collector took to serve again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
LOADGEN=${LOADGEN:-$BIN/caretaker-loadgen}   # another build's collector can be measured with this loadgen
AGENTS=${AGENTS:-100}
EVENTS=${EVENTS:-10000}
BATCH=${BATCH:-25}      # events per batch, and
WINDOW=${WINDOW:-1}     # batches in flight per agent (the loadgen's defaults)
PGBIN=/usr/lib/postgresql/15/bin
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(embedded pg1 pg2)
work=$(mktemp -d /tmp/caretaker-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ -d "$work/pg/data" ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

port=30000
serve() { # dir grpc web -> pid on stdout once serving
    local dir=$1 grpc=$2 web=$3
    "$BIN/caretaker-collector" serve --data-dir "$dir" --grpc-listen "127.0.0.1:$grpc" \
        --web-listen "127.0.0.1:$web" >"$dir.out" 2>"$dir.log" &
    local pid=$!
    for _ in $(seq 1 600); do
        grep -q '^caretaker-collector: grpc=' "$dir.out" 2>/dev/null && break
        sleep 0.1
    done
    echo "$pid"
}
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

start_pg() {
    mkdir -p "$work/pg" && chown postgres:postgres "$work/pg"
    runuser -u postgres -- "$PGBIN/initdb" --auth=trust --encoding=UTF8 --locale=C -D "$work/pg/data" >/dev/null
    runuser -u postgres -- "$PGBIN/pg_ctl" -w -D "$work/pg/data" -l "$work/pg/log" \
        -o "-k $work/pg -c listen_addresses='' -p 55999 -c max_connections=200" start >/dev/null
}
pg_sql() { runuser -u postgres -- "$PGBIN/psql" -h "$work/pg" -p 55999 -d "$1" -At -c "$2"; }

run_case() {
    local name=$1 n=$2 url=${3:-}
    local dirs=() grpcs=() webs=() cpids=()
    for i in $(seq 1 "$n"); do
        local d="$work/$name-$i"
        local args=(init --data-dir "$d")
        [ -n "$url" ] && args+=(--store "$url")
        [ -n "$url" ] && [ "$i" -gt 1 ] && args+=(--join "${dirs[0]}")
        "$BIN/caretaker-collector" "${args[@]}" >/dev/null
        port=$((port + 2))
        dirs+=("$d"); grpcs+=("$port"); webs+=("$((port + 1))")
        local pid; pid=$(serve "$d" "$port" "$((port + 1))"); pids+=("$pid"); cpids+=("$pid")
    done
    local token; token=$("$BIN/caretaker-collector" token create --json --uses "$AGENTS" --data-dir "${dirs[0]}")
    local addrs; addrs=$(printf 'localhost:%s,' "${grpcs[@]}"); addrs=${addrs%,}
    local result
    result=$("$LOADGEN" --collector "$addrs" \
        --token "$(jq -r .token <<<"$token")" --ca-fingerprint "$(jq -r .ca_fingerprint <<<"$token")" \
        --agents "$AGENTS" --events "$EVENTS" --batch "$BATCH" --window "$WINDOW" \
        --api "https://localhost:${webs[0]}" --api-token "$(cat "${dirs[0]}/admin.token")" \
        2>"$work/$name.loadgen.log" | tail -1)
    local data; data=$(grep -o '[0-9]* bytes as JSON' "$work/$name.loadgen.log" | cut -d' ' -f1)
    local rss=""; for p in "${cpids[@]}"; do rss+="$(peak_rss_mib "$p")MiB "; done
    local disk
    if [ -n "$url" ]; then
        disk=$(pg_sql "$name" "SELECT pg_database_size(current_database())")  # the database is named after the case
    else
        disk=$(du -s --block-size=1 "${dirs[0]}/store" | cut -f1)  # blocks in use: redb's file is sparse as it grows
    fi
    # Start-up: stop the first collector, start it again, time until it serves.
    kill "${cpids[0]}"; wait "${cpids[0]}" 2>/dev/null || true
    local t0; t0=$(date +%s.%N)
    local pid; pid=$(serve "${dirs[0]}" "${grpcs[0]}" "${webs[0]}"); pids+=("$pid")
    local t1; t1=$(date +%s.%N)
    printf '%s: %s rss=%s disk=%s data=%s disk/data=%.2f restart_s=%.2f\n' "$name" "$result" \
        "${rss% }" "$disk" "$data" "$(echo "$disk / $data" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
    for p in "${cpids[@]:1}" "$pid"; do kill "$p" 2>/dev/null || true; done
}

for c in "${cases[@]}"; do
    case $c in
        embedded) run_case embedded 1 ;;
        pg1|pg2)
            [ -d "$work/pg/data" ] || start_pg
            pg_sql postgres "CREATE DATABASE $c" >/dev/null
            run_case "$c" "${c#pg}" "postgres://postgres@/$c?host=$work/pg&port=55999" ;;
        *) echo "unknown case $c (embedded, pg1, pg2)" >&2; exit 2 ;;
    esac
done
