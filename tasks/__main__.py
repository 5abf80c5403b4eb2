"""``python -m tasks [doit arguments...]``: the tool from any folder (./stack.sh
execs this), with the loader, commands and backends pyproject.toml names."""

import sys

from .loader import main

sys.exit(main(sys.argv[1:]))
