#!/usr/bin/env bash
# Set-up and entry points for mia-jax. Needs only python3 (>= 3.10) and pip.
#   bash run.sh demo   create .venv, install, run `mia-jax audit` on the built-in digits data
#   bash run.sh test   create .venv, install with test extras, run the test suite
#                      (pytest-xdist: one worker per core, each test file on one worker)
#   bash run.sh bench  CPU smoke run of the benchmark suite
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.mia-jax-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e ".[test,dp]"
    touch "$stamp"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    setup
    "$VENV/bin/mia-jax" audit --out runs/demo --overwrite "$@"
    ;;
  test)
    setup
    "$PY" -m pytest -q -n "${MIA_JAX_TEST_WORKERS:-auto}" --dist loadfile "$@"
    ;;
  bench)
    setup
    "$PY" -m bench --smoke "$@"
    ;;
  *)
    echo "usage: bash run.sh {demo|test|bench} [extra args]" >&2
    exit 2
    ;;
esac
