#!/usr/bin/env bash
# Set up one venv per supported gunicorn major and run the test suite in each: everything on the
# newest gunicorn, on the older majors the integration tests marked gunicorn_internals. Every
# version runs even if one fails; a summary line per version comes at the end, and the exit status
# is non-zero if any version failed. Extra arguments go to every pytest run.
#
# Why that selection on the older majors: memguard's own logic (settings, policy, probes, reports;
# the unit tests and most integration tests) does not depend on gunicorn's version. What does is
# where memguard reaches into gunicorn, which changed between majors: the arbiter's worker count
# and loop (spawn-first raises num_workers from manage_workers; TTIN/TTOU, HUP and a worker killed
# mid-turn), reaping and the exit reports built from it, gthread's drain (memguard drains it itself
# before 24, which reset accepted connections on SIGTERM), and the gevent, uvicorn and asgi workers'
# graceful stop, the worker's exit path (fast exit after worker_exit) and the server-wide budget's
# shares. The marked tests exercise each of those once, which keeps the whole script within
# about 20 minutes on 2 cores. pytest exits 5 when a selection is empty: that counts as a failure,
# so a marker lost in a rename cannot turn a version green.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS='.[test,gevent,uvicorn,prometheus,examples,plot,top]'
# the newest's venv also runs the lint stage, which builds the docs site (the docs extra: mkdocs-material)
NEWEST_EXTRAS='.[test,gevent,uvicorn,prometheus,examples,docs,plot,top]'
# the newest release of each supported major on PyPI (pip index versions gunicorn), newest first
NEWEST=27.0.1
OLDER=(26.2.0 25.3.0 24.1.1 23.0.0 22.0.0)
OLDER_SELECTION='integration and gunicorn_internals'
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

venv() {  # venv DIR GUNICORN_VERSION: create or reuse DIR; reinstall only if the version, the extras or pyproject.toml changed
  local stamp="$1/.memguard-installed" want extras=$EXTRAS
  [ "$2" = "$NEWEST" ] && extras=$NEWEST_EXTRAS
  want="gunicorn==$2 $extras $(cksum < pyproject.toml)"
  if [ ! -x "$1/bin/python" ]; then
    "$PYTHON" -m venv "$1" || return 1
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -f "$stamp"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check -e "$extras" "gunicorn==$2" || return 1
    echo "$want" > "$stamp"
  fi
}

SUMMARY=()
FAILED=0

run() {  # run DIR GUNICORN_VERSION WHAT [PYTEST ARGS...]
  local dir=$1 version=$2 what=$3 started=$SECONDS rc outcome counts log="$LOGS/$2.log"
  shift 3
  echo "== gunicorn $version: $what"
  if ! venv "$dir" "$version"; then
    rc=1 outcome="FAILED (could not install gunicorn $version)" counts=""
  else
    "$dir/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    counts=$(grep -E '^[0-9]+ [a-z]+.* in [0-9.]+s' "$log" | tail -1 | sed -E 's/ in [0-9.]+s.*//')
    case $rc in
      0) outcome="passed" ;;
      5) outcome="FAILED (no tests selected)" ;;
      *) outcome="FAILED (pytest exit $rc)" ;;
    esac
  fi
  [ "$rc" -eq 0 ] || FAILED=1
  SUMMARY+=("gunicorn $version: $outcome, $what: ${counts:-no tests ran}, $((SECONDS - started)) s")
}

install_promtool() {  # make promtool available for the tests of conf_examples/prometheus, where it can be; they skip without it
  if command -v promtool >/dev/null 2>&1; then
    SUMMARY+=("promtool: $(promtool --version 2>&1 | head -1)")
  elif [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    SUMMARY+=("promtool: missing (install Debian's package prometheus, as root): its tests skip")
  else
    # Debian's package prometheus has promtool (it is also the server: where systemd runs, it starts it)
    echo "== installing promtool: apt-get install prometheus"
    if { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
    } >"$LOGS/apt.log" 2>&1 && command -v promtool >/dev/null 2>&1; then
      SUMMARY+=("promtool: installed, $(promtool --version 2>&1 | head -1)")
    else
      tail -5 "$LOGS/apt.log"
      SUMMARY+=("promtool: could not be installed: its tests skip")
    fi
  fi
}

install_tmux() {  # a real terminal for the test of memguard top's live view; it skips without tmux
  if command -v tmux >/dev/null 2>&1; then
    SUMMARY+=("tmux: $(tmux -V)")
  elif [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    SUMMARY+=("tmux: missing (install Debian's package tmux, as root): the live view's test skips")
  else
    echo "== installing tmux: apt-get install tmux"
    if { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux; }
    } >"$LOGS/apt-tmux.log" 2>&1 && command -v tmux >/dev/null 2>&1; then
      SUMMARY+=("tmux: installed, $(tmux -V)")
    else
      tail -5 "$LOGS/apt-tmux.log"
      SUMMARY+=("tmux: could not be installed: the live view's test skips")
    fi
  fi
}

install_promtool
install_tmux
echo "== lint: ruff check, ruff format --check, mypy, mkdocs build --strict"
# the docs site is built strictly (any warning fails it: a broken link or anchor, a page not in the
# nav) into a temporary folder; NO_MKDOCS_2_WARNING silences mkdocs-material's notice about its successor
if venv .venv "$NEWEST" && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy \
  && NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$LOGS/site"; then
  SUMMARY+=("lint: passed")
else
  FAILED=1
  SUMMARY+=("lint: FAILED")
fi
run .venv "$NEWEST" "all tests" "$@"
for version in "${OLDER[@]}"; do
  run ".venv-gunicorn-${version%%.*}" "$version" "integration tests marked gunicorn_internals" \
    -m "$OLDER_SELECTION" "$@"
done

echo
echo "== summary ($SECONDS s)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
