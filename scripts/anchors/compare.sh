#!/usr/bin/env bash
# Tandem beside llama.cpp on the same weights, interleaved round by round (see compare.py):
# builds the release `tandem`, then runs scripts/anchors/compare.py with these arguments.
#   nice scripts/anchors/compare.sh [--rounds 3] [--threads 1,2] [--out FILE.jsonl]
# Needs scripts/anchors/llamacpp.sh to have run first. Not part of CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
echo "compare.sh: building the release tandem (cargo build --release -p tandem-device --bin tandem)" >&2
cargo build --release -p tandem-device --bin tandem >&2
echo "compare.sh: machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec python3 "$here/compare.py" "$@"
