#!/usr/bin/env bash
# Set up kata-passt-stack (once: a virtualenv in .venv with its Python
# dependencies) and run doit on the stack: ./stack.sh [doit arguments...]
#   ./stack.sh                 fetch, patch, build and install what is stale
#   ./stack.sh list            every task
#   ./stack.sh stack=my.yaml   another stack file
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${KPS_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/doit" ] || [ "$here/pyproject.toml" -nt "$venv/.kps-installed" ]; then
    echo "kata-passt-stack: setting up $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here"
    touch "$venv/.kps-installed"
fi
exec "$venv/bin/doit" -f "$here/dodo.py" "$@"
