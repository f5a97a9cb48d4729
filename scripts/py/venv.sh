#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the daemon tests' clients pinned in
# scripts/py/requirements.txt (openai, grpcio, grpcio-tools), in Tandem's cache, and prints its
# python's path (scripts/venv.sh). The first run downloads about 60 MB of wheels from PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../venv.sh" "$here/requirements.txt" py
