#!/usr/bin/env bash
# Set up one venv per supported gunicorn major and run the test suite in each:
# lint (ruff, mypy) first, then everything on the newest gunicorn, the integration tests again
# on the older ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS='.[test,gevent,uvicorn,prometheus]'
NEWEST=27.0.1
OLDER=(23.0.0 22.0.0)

venv() {  # venv DIR GUNICORN_VERSION
  if [ ! -x "$1/bin/python" ]; then
    "$PYTHON" -m venv "$1"
  fi
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check -e "$EXTRAS" "gunicorn==$2"
}

venv .venv "$NEWEST"
echo "== lint: ruff check, ruff format --check, mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
echo "== gunicorn $NEWEST: all tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

for version in "${OLDER[@]}"; do
  dir=".venv-gunicorn-${version%%.*}"
  venv "$dir" "$version"
  echo "== gunicorn $version: integration tests"
  "$dir/bin/python" -m pytest -q -p no:cacheprovider -m integration "$@"
done
