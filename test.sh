#!/usr/bin/env bash
# Set up (once: .venv with the test dependencies) and run the checks:
# ruff, then the test suite.  ./test.sh [--all] [pytest arguments...]
# The kill -9 trials (marked slow) run only with --all, as .ci/run does.
# Tests run in one worker per CPU (pytest-xdist); pass -n 0 to run them in
# this process.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${KPS_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/pytest" ] || [ "$here/pyproject.toml" -nt "$venv/.kps-test-installed" ]; then
    echo "kata-passt-stack: setting up $venv for the tests" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
    touch "$venv/.kps-test-installed" "$venv/.kps-installed"
fi
cd "$here"
"$venv/bin/ruff" check .
tier=(-m "not slow")
if [ "${1:-}" = "--all" ]; then
    tier=()
    shift
fi
exec "$venv/bin/python" -m pytest -n auto "${tier[@]}" "$@"
