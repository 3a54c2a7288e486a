#!/usr/bin/env bash
# Starts or stops a private PostgreSQL cluster for the tests: on a unix socket in DIR, no TCP, never the system service.
#   scripts/pg-cluster.sh start DIR [PORT]   initdb into DIR/data (first time) and start; prints DIR:PORT
#   scripts/pg-cluster.sh stop DIR           stop it (the directory stays; remove it yourself)
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser).
# Trust authentication is safe here only because the socket directory is private to the run.
# The server keeps fsync on: the tests check durability, not just results.
set -euo pipefail

bin=${CARETAKER_PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}
dir=${2:-}
port=${3:-5432}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
fi

as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
fi

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        # The server (as postgres) makes its socket and data directory here.
        chown postgres:postgres "$dir"
        chmod 0755 "$dir"
    fi
    if [ ! -e "$dir/data/PG_VERSION" ]; then
        "${as_pg[@]}" "$bin/initdb" -D "$dir/data" --auth=trust -U postgres -E UTF8 --locale=C \
            --no-sync >"$dir/initdb.log"
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-k $dir -c listen_addresses='' -p $port -c fsync=on -c max_connections=300" start >/dev/null
    echo "$dir:$port"
    ;;
stop)
    if [ -e "$dir/data/postmaster.pid" ]; then
        "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
