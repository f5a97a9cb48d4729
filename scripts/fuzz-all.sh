#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace for N minutes each, one at a time on one core
# (nice), and writes a results table (runs, coverage, crashes) to each fuzz crate's RESULTS.md.
#
#   scripts/fuzz-all.sh [--minutes N] [--only CRATE_DIR] [--target NAME]
#
# N defaults to 10. Needs the nightly toolchain (cargo-fuzz builds with sanitizers) and
# cargo-fuzz; when cargo-fuzz is missing it is installed from crates.io at the pinned version.
# A crash leaves libFuzzer's reproducer under CRATE/fuzz/artifacts/TARGET/ and is reported in the
# table; the script goes on with the other targets and exits 1 at the end if any target crashed
# or failed to build. Not part of CI (it takes N minutes per target).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
minutes=10
only=""
only_target=""
while (($#)); do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --target) only_target="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "fuzz-all: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$minutes" =~ ^[0-9]+$ && "$minutes" -ge 1 && "$minutes" -le 1440 ]] || {
  echo "fuzz-all: --minutes must be a whole number of minutes in 1..=1440, not '$minutes'" >&2
  exit 2
}
rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz-all: the nightly toolchain is needed (cargo-fuzz builds with sanitizers): rustup toolchain install nightly" >&2
  exit 2
}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-all: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
fuzz_version=$(cargo fuzz --version)
seconds=$((minutes * 60))
failed=0
today=$(date -u +%Y-%m-%d)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')

for crate in */fuzz; do
  [[ -f "$crate/Cargo.toml" ]] || continue
  [[ -z "$only" || "$crate" == "$only" || "$crate" == "$only/fuzz" ]] || continue
  rows=()
  for f in "$crate"/fuzz_targets/*.rs; do
    target=$(basename "$f" .rs)
    [[ -z "$only_target" || "$target" == "$only_target" ]] || continue
    log=$(mktemp)
    echo "fuzz-all: $crate $target: building" >&2
    if ! (cd "$crate/.." && nice cargo +nightly fuzz build "$target" >"$log" 2>&1); then
      echo "fuzz-all: $crate $target: BUILD FAILED (log: $log)" >&2
      rows+=("| \`$target\` | — | — | build failed |")
      failed=1
      continue
    fi
    echo "fuzz-all: $crate $target: running ${minutes} min on one core" >&2
    # New inputs go to a scratch corpus under fuzz/target (ignored by git); the committed seeds
    # in fuzz/corpus/TARGET are read, never written.
    mkdir -p "$crate/target/corpus/$target" "$crate/corpus/$target"
    status=0
    # One job, one worker: one core. -print_final_stats gives the run count.
    (cd "$crate/.." && nice cargo +nightly fuzz run "$target" \
      "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=4096) \
      >"$log" 2>&1 || status=$?
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || true)
    ft=$(grep -Eo 'ft: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || true)
    if ((status == 0)); then
      result="no crash"
    else
      artifact=$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')
      result="**crash** (exit $status${artifact:+, reproducer $artifact})"
      failed=1
      cp "$log" "$crate/artifacts/$target.log" 2>/dev/null || true
    fi
    echo "fuzz-all: $crate $target: ${runs:-?} runs, cov ${cov:-?} ft ${ft:-?}: $result" >&2
    rows+=("| \`$target\` | ${runs:-?} | ${cov:-?} / ${ft:-?} | $result |")
    rm -f "$log"
  done
  ((${#rows[@]})) || continue
  {
    echo
    echo "## scripts/fuzz-all.sh, $today: ${minutes} min per target"
    echo
    echo "\`scripts/fuzz-all.sh --minutes $minutes\` ($fuzz_version, nightly, one core each, nice;"
    echo "$cpu, load average at the end $(cut -d' ' -f1-3 /proc/loadavg))."
    echo
    echo "| target | runs | coverage (cov / ft) | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } >>"$crate/RESULTS.md"
  echo "fuzz-all: results appended to $crate/RESULTS.md" >&2
done
exit "$failed"
