#!/usr/bin/env bash
# The project's test command (README, second set-up command). CI (`.ci/run`) runs exactly this.
# It first installs the Debian packages the tests need when run as root, or stops with the
# command that installs them (scripts/test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-deps.sh
cargo test --workspace --locked "$@"
