#!/usr/bin/env bash
# The project's test command (README, second set-up command). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
