#!/usr/bin/env bash
# Runs Caretaker on this machine with embedded defaults: a collector (dashboard and API on
# https://localhost:8443, with a first network manager account) and an agent enrolled with it. State lives in ./demo-data (or $CARETAKER_DEMO_DIR). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${CARETAKER_DEMO_DIR:-$PWD/demo-data}"
grpc="${CARETAKER_GRPC:-127.0.0.1:7443}"
web="${CARETAKER_WEB:-127.0.0.1:8443}"

cargo build --release --bins --locked
bin="$PWD/target/release"

if [ ! -e "$data/collector/ca.pem" ]; then
    "$bin/caretaker-collector" init --data-dir "$data/collector" --school "Demo School"
fi
# A first network manager for the dashboard; the password is kept beside the data (0600).
if [ ! -e "$data/manager.password" ]; then
    ( umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$data/manager.password" )
    "$bin/caretaker-collector" user add --data-dir "$data/collector" --role network_manager \
        --username manager --password-stdin < "$data/manager.password"
fi
"$bin/caretaker-collector" serve --data-dir "$data/collector" --grpc-listen "$grpc" --web-listen "$web" > "$data/collector.out" &
collector=$!
trap 'kill $collector ${agent:-} 2>/dev/null; wait' EXIT INT TERM
# Wait until it says it is listening; stop here if it could not start (port in use, ...).
until grep -q "grpc=" "$data/collector.out" 2>/dev/null; do
    if ! kill -0 "$collector" 2>/dev/null; then
        echo "The collector did not start (see its message above)." >&2
        exit 1
    fi
    sleep 0.1
done

if [ ! -e "$data/agent/enrollment.json" ]; then
    json=$("$bin/caretaker-collector" token create --data-dir "$data/collector" --json --label demo)
    token=$(printf '%s' "$json" | sed -E 's/.*"token":"([^"]+)".*/\1/')
    fp=$(printf '%s' "$json" | sed -E 's/.*"ca_fingerprint":"([^"]+)".*/\1/')
    "$bin/caretaker-agent" enroll --collector "localhost:${grpc##*:}" --token "$token" --ca-fingerprint "$fp" --state-dir "$data/agent"
fi
printf 'heartbeat_interval = "30s"\n' > "$data/agent.toml"
"$bin/caretaker-agent" run --state-dir "$data/agent" --config "$data/agent.toml" &
agent=$!

cat <<MSG

Caretaker is running.
  Dashboard:    https://localhost:${web##*:}/
                sign in as: manager   password: $(cat "$data/manager.password")
                (the certificate is the demo school's own CA: $data/collector/ca.pem;
                 accept the browser's warning, or import that CA, see README "Trusting the dashboard")
  API:          curl --cacert $data/collector/ca.pem -H "Authorization: Bearer \$(cat $data/collector/admin.token)" https://localhost:${web##*:}/api/v1/events
  Agent status: $bin/caretaker-agent status --state-dir $data/agent
Ctrl-C stops both.

MSG
wait
