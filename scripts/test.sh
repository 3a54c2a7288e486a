#!/usr/bin/env bash
# Runs every test: installs the system packages the tests use, builds once, then runs the whole workspace's tests.
# The end-to-end tests start real collector and agent processes, real clamd, real dpkg, Xvfb and D-Bus.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# Build every binary first: the end-to-end tests run the real caretaker-agent and caretaker-collector.
cargo build --workspace --bins --locked
cargo test --workspace --locked
