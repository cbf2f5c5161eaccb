#!/usr/bin/env bash
# Sets up the machine (idempotent), builds `corral` and `corralctl`, and runs `corral up` on the
# embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet -p corral -p corral-cli
exec target/release/corral up "$@"
