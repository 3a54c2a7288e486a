#!/usr/bin/env bash
# The purge of expired records: a store of EXPIRED events dated past the technical retention
# and as many recent ones, then time the purge and the loadgen's ingest rate during it against
# the rate without it. For BENCHMARKS.md.
#
#   scripts/bench-purge.sh
#
# Uses release binaries from $BIN (default target/release; build them with
# `cargo build --release -p caretaker-collector -p caretaker-tests --bins`). AGENTS x EVENTS is
# each fill (default 100 x 10000: 1,000,000 expired and 1,000,000 recent), LIVE_AGENTS x
# LIVE_EVENTS the ingest measured without and during the purge (default 20 x 10000), BATCH the
# purge's batch (default the collector's, 5000). Prints the purge's time and counts, and both
# ingest rates.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
AGENTS=${AGENTS:-100}
EVENTS=${EVENTS:-10000}
LIVE_AGENTS=${LIVE_AGENTS:-20}
LIVE_EVENTS=${LIVE_EVENTS:-10000}
BATCH=${BATCH:-5000}
work=$(mktemp -d /tmp/caretaker-purge.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

dir=$work/collector
grpc=31500
web=31501
serve() { # extra serve options -> $pid once serving
    "$BIN/caretaker-collector" serve --data-dir "$dir" --grpc-listen "127.0.0.1:$grpc" \
        --web-listen "127.0.0.1:$web" "$@" >"$dir.out" 2>>"$dir.log" &
    pid=$!
    for _ in $(seq 1 600); do
        grep -q '^caretaker-collector: grpc=' "$dir.out" 2>/dev/null && return
        sleep 0.1
    done
    echo "the collector did not start; see $dir.log" >&2
    exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
settings() { # JSON document
    echo "$1" >"$work/settings.json"
    "$BIN/caretaker-collector" settings set --data-dir "$dir" --file "$work/settings.json" >/dev/null
}

"$BIN/caretaker-collector" init --data-dir "$dir" >/dev/null
serve
# Nothing expires while the store is filled.
settings '{"retention": {"technical_days": 0, "safeguarding_days": 0, "audit_days": 0, "digests_days": 0}}'
token=$("$BIN/caretaker-collector" token create --json --uses $((2 * AGENTS + 2 * LIVE_AGENTS)) --data-dir "$dir")
load() { # work-dir agents events [loadgen options] -> its last line
    local w=$1 a=$2 e=$3
    shift 3
    "$BIN/caretaker-loadgen" --collector "localhost:$grpc" \
        --token "$(jq -r .token <<<"$token")" --ca-fingerprint "$(jq -r .ca_fingerprint <<<"$token")" \
        --agents "$a" --events "$e" --api "https://localhost:$web" \
        --api-token "$(cat "$dir/admin.token")" --work-dir "$work/$w" --no-verify "$@" \
        2>>"$work/loadgen.log" | tail -1
}
echo "fill, expired: $(load expired "$AGENTS" "$EVENTS" --occurred-days-ago 500)"
echo "fill, recent:  $(load recent "$AGENTS" "$EVENTS")"
# The measured agents enrol now (one event each), so both measured runs only stream.
load live1 "$LIVE_AGENTS" 1 >/dev/null
load live2 "$LIVE_AGENTS" 1 >/dev/null
echo "store: $(du -s --block-size=1M "$dir/store" | cut -f1) MiB"

# Ingest without a purge (each measured run resends its seq 1 and stores the rest).
echo "ingest without purge: $(load live1 "$LIVE_AGENTS" "$LIVE_EVENTS")"

# The defaults (technical events 400 days): a purge starts 2 s after the collector does.
settings '{}'
stop
serve --purge-every 2s --purge-batch "$BATCH"
sleep 3
echo "ingest during purge:  $(load live2 "$LIVE_AGENTS" "$LIVE_EVENTS")"
grep -q 'Expired records purged' "$dir.log" && echo "warning: the purge ended before the measured ingest did" >&2
for _ in $(seq 1 3600); do
    grep -q 'Expired records purged' "$dir.log" && break
    sleep 1
done
grep 'Expired records purged' "$dir.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g'
stop
echo "store after: $(du -s --block-size=1M "$dir/store" | cut -f1) MiB (redb reuses freed pages; the file does not shrink)"
