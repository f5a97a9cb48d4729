#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the daemon tests' clients pinned in
# scripts/py/requirements.txt (openai, grpcio, grpcio-tools), and prints its python's path. The
# environment lives in Tandem's cache ($TANDEM_CACHE, else $XDG_CACHE_HOME/tandem, else
# ~/.cache/tandem), keyed by the requirements' SHA-256, so a changed pin makes a new one. The
# first run downloads about 60 MB of wheels from PyPI; later runs use no network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
key="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
venv="$cache/venv-py-$key"
if [[ ! -x "$venv/bin/python" ]] || [[ ! -f "$venv/.complete" ]]; then
  echo "scripts/py/venv.sh: installing openai, grpcio, grpcio-tools into $venv (once)" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
