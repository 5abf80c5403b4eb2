#!/usr/bin/env bash
# Set up (once: .venv with the test dependencies) and run the checks:
# ruff, then the test suite.  ./test.sh [--all] [pytest arguments...]
# The kill -9 trials (marked slow) run only with --all, as .ci/run does.
# Tests run in one worker per CPU plus one (pytest-xdist): about a third of
# a worker's time is spent waiting (time limits under test, commands held
# until the test looks), and an extra worker fills it.  Pass -n 0 to run
# them in this process.
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
workers=$(( $(nproc 2>/dev/null || echo 1) + 1 ))
# The tests' folders (pytest's tmp_path, about 400 MB and 100,000 files per
# session) go on tmpfs when /dev/shm is one with 2 GB free: on disk, the
# fsyncs the merge makes and deleting an old session's folders cost 10-20 s.
# Only the last session's folders are kept there, for a look after a failure.
# KPS_TEST_TMPDIR=DIR chooses the place (KPS_TEST_TMPDIR= : the default).
keep=()
if [ -z "${KPS_TEST_TMPDIR+set}" ] && [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] \
   && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -ge 2097152 ]; then
    KPS_TEST_TMPDIR=/dev/shm/kps-tests-$(id -u)
    keep=(-o tmp_path_retention_count=1)
fi
if [ -n "${KPS_TEST_TMPDIR:-}" ]; then
    mkdir -p -m 1777 "$KPS_TEST_TMPDIR"  # as /tmp: one test runs as nobody
    export TMPDIR="$KPS_TEST_TMPDIR"
    echo "kata-passt-stack: test folders under $TMPDIR/pytest-of-$(id -un)" >&2
fi
exec "$venv/bin/python" -m pytest -n "$workers" "${keep[@]}" "${tier[@]}" "$@"
