#!/usr/bin/env bash
# The whole test suite: system packages, then every test of the workspace (unit, conformance
# against SQLite and a real etcd, API server, kubectl and kube-rs clients).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo nextest run --workspace --all-features --no-fail-fast "$@"
