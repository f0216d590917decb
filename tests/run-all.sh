#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit and integration tests against the built-in
# Atlas simulator. Works on a fresh machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets
bash tests/helm/run.sh
