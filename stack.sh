#!/usr/bin/env bash
# Set up kata-passt-stack (once: a virtualenv in .venv with its Python
# dependencies) and run doit on the stack, from any folder, through the
# tool's own entry point (python -m tasks): ./stack.sh [doit arguments...]
#   ./stack.sh                 fetch, patch, build and install what is stale
#   ./stack.sh list            every task
#   ./stack.sh stack=my.yaml   another stack file
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in -h|--help)
    cat <<'EOF'
usage: ./stack.sh [NAME=VALUE...] [doit options] [command or tasks...]   (python -m tasks)

  ./stack.sh                  build and install what is stale (check, fetch, patch,
                              build, install, image, config)
  ./stack.sh status           per component: ref, commit, patches, edits, built and
                              installed, and what a plain run would do and why
  ./stack.sh show:NAME        NAME as resolved: commit, patches, commands, paths
  ./stack.sh graph            the task graph: <workdir>/graph.dot, .mmd (and .svg)
  ./stack.sh try:NAME ref=REF would NAME's patches apply to version REF?
  ./stack.sh smoke            the stack's end-to-end check (stack.yaml's smoke:)
  ./stack.sh bisect:NAME good=REF bad=REF
                              the commit of NAME that broke test=smoke (or image_boot, CMD)
  ./stack.sh run_pod          run the example pod (stop_pod removes it)
  ./stack.sh update[:NAME]    re-resolve tags and branches into stack.lock
  ./stack.sh reset:NAME       stash the local edits of a checkout
  ./stack.sh uninstall[:NAME] remove what the installs wrote

variables:  stack=FILE (another stack file)   force=1 (config: overwrite a hand
            edit)   ref=REF (try:NAME)
progress:   KPS_PROGRESS=live|notes|stream|off (default: live on a terminal)
more:       ./stack.sh list, ./stack.sh help, ./stack.sh help TASK, ./stack.sh info TASK
EOF
    exit 0 ;;
esac
venv="${KPS_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/doit" ] || [ "$here/pyproject.toml" -nt "$venv/.kps-installed" ]; then
    echo "kata-passt-stack: setting up $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here"
    touch "$venv/.kps-installed"
fi
# doit with this tool's loader, commands and backends (pyproject.toml's
# [tool.doit], read by tasks/loader.py), whatever folder this runs from (-P:
# a tasks/ folder where it runs is not ours).
exec "$venv/bin/python" -P -m tasks "$@"
