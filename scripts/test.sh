#!/usr/bin/env bash
# Set up one venv per supported gunicorn major and run the test suite in each:
# everything on the newest gunicorn, the integration tests again on the older ones.
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
echo "== gunicorn $NEWEST: all tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

# The older versions' runs go side by side: integration tests mostly wait on real servers (the
# suite uses a fraction of a core), and each test has its own ports and temporary folders.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for version in "${OLDER[@]}"; do
  dir=".venv-gunicorn-${version%%.*}"
  venv "$dir" "$version"
  "$dir/bin/python" -m pytest -q -p no:cacheprovider -m integration "$@" >"$logs/$version" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!OLDER[@]}"; do
  wait "${pids[$i]}" || status=1
  echo "== gunicorn ${OLDER[$i]}: integration tests"
  cat "$logs/${OLDER[$i]}"
done
exit $status
