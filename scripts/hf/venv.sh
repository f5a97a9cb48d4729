#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the Hugging Face reference stack pinned in
# scripts/hf/requirements.txt, in Tandem's cache, and prints its python's path (scripts/venv.sh).
# The first run downloads torch from PyPI (about 3 GB with its CUDA libraries, which the CPU
# tests do not use).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../venv.sh" "$here/requirements.txt" hf
