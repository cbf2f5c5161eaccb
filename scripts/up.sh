#!/usr/bin/env bash
# Sets up the machine (idempotent) and runs `corral up` on the embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --quiet -p corral -- up "$@"
