#!/usr/bin/env bash
# Builds llama.cpp (the engine behind Ollama) as the speed anchor for Tandem, from a pinned PyPI
# sdist, and makes the GGUFs Tandem is compared on. Not part of CI; see BENCHMARKS.md.
#
#   scripts/anchors/llamacpp.sh [--print-env]
#
# 1. `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` (its sdist vendors
#    llama.cpp's source in vendor/llama.cpp); the sdist's SHA-256 is checked against the one
#    recorded below, a mismatch is refused.
# 2. Builds llama-bench, llama-quantize and llama-perplexity with Debian's cmake
#    (-DGGML_NATIVE=ON, no curl, no OpenSSL, no server/UI, nothing fetched at build time).
#    cmake is installed with apt-get when missing and we are root; otherwise the script says so.
# 3. Beside the original Q4_1 GGUF (models/fetch-smollm2.sh places it and prints its path) makes
#    SmolLM2-135M-Instruct.F16.gguf, .Q8_0.gguf and .Q4_0.gguf. The F16 file is the Q4_1 file's
#    weights dequantized and stored as f16 (`llama-quantize --allow-requantize ... F16`): the
#    same values Tandem's own f16 import (`tandem model import FILE.gguf --dtype f16`) holds,
#    without the 3 GB torch install that the vendored convert_hf_to_gguf.py needs. Q8_0 and Q4_0
#    are quantized from that F16 file with llama-quantize's defaults (as llama.cpp users do).
#
# Everything lives in $TANDEM_CACHE, else $XDG_CACHE_HOME/tandem, else ~/.cache/tandem, under
# anchors/ (source and build) and beside the Q4_1 file (the GGUFs). Idempotent: each step is
# skipped when its output exists. The last lines of stdout are KEY=VALUE pairs (the binaries'
# and GGUFs' paths) that scripts/anchors/compare.sh reads; --print-env prints only those and
# fails if anything is missing. Run it with `nice`: the build takes about 15 minutes on 2 cores.
set -euo pipefail

VERSION=0.3.36
SDIST="llama_cpp_python-$VERSION.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-bench llama-quantize llama-perplexity)

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
anchors="$cache/anchors"
src="$anchors/llama_cpp_python-$VERSION/vendor/llama.cpp"
build="$anchors/build-$VERSION"
bin="$build/bin"

say() { echo "llamacpp.sh: $*" >&2; }
die() { say "$*"; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

print_env() {
  local q41="$1"
  local dir
  dir="$(dirname "$q41")"
  echo "LLAMA_BENCH=$bin/llama-bench"
  echo "LLAMA_QUANTIZE=$bin/llama-quantize"
  echo "LLAMA_PERPLEXITY=$bin/llama-perplexity"
  echo "GGUF_Q4_1=$q41"
  echo "GGUF_F16=$dir/SmolLM2-135M-Instruct.F16.gguf"
  echo "GGUF_Q8_0=$dir/SmolLM2-135M-Instruct.Q8_0.gguf"
  echo "GGUF_Q4_0=$dir/SmolLM2-135M-Instruct.Q4_0.gguf"
}

only_env=0
while (($#)); do
  case "$1" in
    --print-env) only_env=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done

if ((only_env)); then
  q41="$(dirname "$anchors")/SmolLM2-135M-Instruct.Q4_1.gguf"
  env_lines="$(print_env "$q41")"
  while IFS='=' read -r k v; do
    [[ -e "$v" ]] || die "$k ($v) is missing: run scripts/anchors/llamacpp.sh first"
  done <<<"$env_lines"
  echo "$env_lines"
  exit 0
fi

mkdir -p "$anchors"

# --- 1. the source ---------------------------------------------------------------------------
if [[ ! -f "$src/CMakeLists.txt" ]]; then
  if [[ ! -f "$anchors/$SDIST" ]] || [[ "$(sha "$anchors/$SDIST")" != "$SDIST_SHA256" ]]; then
    command -v python3 >/dev/null || die "python3 (with pip) is needed to download llama-cpp-python==$VERSION from PyPI"
    tmp="$(mktemp -d "$anchors/.dl.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    say "downloading llama-cpp-python==$VERSION (sdist, 77 MB) from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary :all: --no-cache-dir \
      "llama-cpp-python==$VERSION" -d "$tmp" >&2
    [[ -f "$tmp/$SDIST" ]] || die "pip did not produce $SDIST (got: $(ls "$tmp"))"
    got="$(sha "$tmp/$SDIST")"
    [[ "$got" == "$SDIST_SHA256" ]] ||
      die "$SDIST has SHA-256 $got, but this script records $SDIST_SHA256: refusing it (check your PyPI mirror)"
    mv "$tmp/$SDIST" "$anchors/$SDIST"
  fi
  say "unpacking $SDIST into $anchors"
  rm -rf "$anchors/llama_cpp_python-$VERSION"
  tar -xzf "$anchors/$SDIST" -C "$anchors"
  [[ -f "$src/CMakeLists.txt" ]] || die "$SDIST has no vendor/llama.cpp/CMakeLists.txt"
fi

# --- 2. the build ----------------------------------------------------------------------------
need_build=0
for t in "${TARGETS[@]}"; do [[ -x "$bin/$t" ]] || need_build=1; done
if ((need_build)); then
  if ! command -v cmake >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      say "cmake is missing: installing Debian's cmake with apt-get"
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >&2
    else
      die "cmake is missing: install it (Debian: sudo apt-get install cmake) and run this again"
    fi
  fi
  command -v c++ >/dev/null || die "a C++ compiler is missing (Debian: apt-get install g++)"
  say "configuring llama.cpp ($src) in $build"
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DBUILD_SHARED_LIBS=OFF -DFETCHCONTENT_FULLY_DISCONNECTED=ON >&2
  jobs="$(nproc 2>/dev/null || echo 2)"
  say "building ${TARGETS[*]} with $jobs jobs (about 15 minutes on 2 cores)"
  cmake --build "$build" --config Release -j "$jobs" --target "${TARGETS[@]}" >&2
  for t in "${TARGETS[@]}"; do [[ -x "$bin/$t" ]] || die "the build did not produce $bin/$t"; done
fi

# --- 3. the GGUFs ----------------------------------------------------------------------------
q41="$(TANDEM_CACHE="$(dirname "$anchors")" "$repo/models/fetch-smollm2.sh" | tail -n 1)"
[[ -f "$q41" ]] || die "models/fetch-smollm2.sh did not give a GGUF path (got \`$q41\`)"
dir="$(dirname "$q41")"
f16="$dir/SmolLM2-135M-Instruct.F16.gguf"

quantize() { # quantize IN OUT TYPE [extra args]
  local in="$1" out="$2" type="$3"
  shift 3
  if [[ -s "$out" ]]; then
    say "$(basename "$out") exists"
    return
  fi
  say "making $(basename "$out") from $(basename "$in")"
  "$bin/llama-quantize" "$@" "$in" "$out.tmp" "$type" >"$out.log" 2>&1 ||
    die "llama-quantize $type failed (see $out.log)"
  mv "$out.tmp" "$out"
}
quantize "$q41" "$f16" F16 --allow-requantize
quantize "$f16" "$dir/SmolLM2-135M-Instruct.Q8_0.gguf" Q8_0
quantize "$f16" "$dir/SmolLM2-135M-Instruct.Q4_0.gguf" Q4_0

say "done"
print_env "$q41"
