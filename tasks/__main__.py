"""``python -m tasks [doit arguments...]``: the tool from any folder (./stack.sh
execs this), with the loader, commands and backends pyproject.toml names."""

import sys

from .loader import main

# The tool answers as doit: ``tabcompletion`` names the program from argv[0],
# and a script completing ``__main__.py`` would complete nothing.
sys.argv[0] = "doit"
sys.exit(main(sys.argv[1:]))
