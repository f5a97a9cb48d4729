#!/usr/bin/env bash
# scripts/venv.sh REQUIREMENTS NAME: makes (once) a Python virtual environment with the pinned
# REQUIREMENTS file installed and prints its python's path. The environment lives in Tandem's
# cache ($TANDEM_CACHE, else $XDG_CACHE_HOME/tandem, else ~/.cache/tandem) as
# venv-NAME-<first 16 hex of the requirements' SHA-256>, so a changed pin makes a new one; later
# runs use no network. Called by scripts/hf/venv.sh and scripts/py/venv.sh.
set -euo pipefail
req="${1:?usage: scripts/venv.sh REQUIREMENTS NAME}"
name="${2:?usage: scripts/venv.sh REQUIREMENTS NAME}"
cache="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
key="$(sha256sum "$req" | cut -c1-16)"
venv="$cache/venv-$name-$key"
ready() { [[ -x "$venv/bin/python" && -f "$venv/.complete" ]]; }
if ! ready; then
  mkdir -p "$cache"
  # Tests run in parallel and may all ask at once on a fresh machine: one makes the
  # environment under the lock, the others wait for it and then use it.
  exec 9>"$venv.lock"
  flock 9
fi
if ! ready; then
  echo "scripts/venv.sh: installing $req into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
