#!/usr/bin/env bash
# Runs every test: installs the system packages the tests use, builds once, then runs the whole workspace's tests.
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
cargo test --workspace --locked
