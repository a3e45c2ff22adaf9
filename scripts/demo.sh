#!/usr/bin/env bash
# Set up a venv and run the demo: gunicorn under memguard, a leaking app, load, a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
.venv/bin/python scripts/demo.py
