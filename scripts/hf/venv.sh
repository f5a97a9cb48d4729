#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the Hugging Face reference stack pinned in
# scripts/hf/requirements.txt, and prints its python's path. The environment lives in Tandem's
# cache ($TANDEM_CACHE, else $XDG_CACHE_HOME/tandem, else ~/.cache/tandem), keyed by the
# requirements' SHA-256, so a changed pin makes a new one. The first run downloads torch from
# PyPI (about 3 GB with its CUDA libraries, which the CPU tests do not use).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
key="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
venv="$cache/venv-hf-$key"
if [[ ! -x "$venv/bin/python" ]] || [[ ! -f "$venv/.complete" ]]; then
  echo "scripts/hf/venv.sh: installing the Hugging Face reference stack into $venv (once)" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
