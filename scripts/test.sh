#!/usr/bin/env bash
# Runs every test: installs the system packages the tests use, builds once (Linux and Windows), then runs the whole workspace's tests.
# The end-to-end tests start real collector and agent processes, real clamd, real dpkg, Xvfb and D-Bus.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The build needs a few GiB (the workspace, then a static guest agent for the USB VM test). A linker
# that runs out of disk dies with SIGBUS, which reads like a compiler bug: say so up front instead.
mkdir -p target
avail_kib=$(df --output=avail -k target | tail -1 | tr -d ' ')
echo "test.sh: $((avail_kib / 1024)) MiB free for target/"
if [ "$avail_kib" -lt $((6 * 1024 * 1024)) ]; then
    echo "test.sh: warning: under 6 GiB free; the build may fail for want of disk" >&2
fi
# Build every binary first: the end-to-end tests run the real caretaker-agent and caretaker-collector.
cargo build --workspace --bins --locked
# The Windows agent and its MSI (tests/windows_wine.rs runs them under Wine), then its unit
# tests under Wine: Debian's Rust with build-std and mingw, all under target/windows.
scripts/windows.sh build
scripts/windows.sh msi
scripts/windows.sh test
# One private PostgreSQL for the whole run (the PostgreSQL store's tests make a database each in
# it): on a socket in a temporary directory, stopped and removed however the run ends.
pg_dir=$(mktemp -d -t caretaker-pg.XXXXXX)
trap 'scripts/pg-cluster.sh stop "$pg_dir" || true; rm -rf "$pg_dir"' EXIT
CARETAKER_TEST_PG=$(scripts/pg-cluster.sh start "$pg_dir")
export CARETAKER_TEST_PG
cargo test --workspace --locked
