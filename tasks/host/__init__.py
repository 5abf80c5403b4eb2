"""What touches the host beyond running commands, one package per feature:
``pod``, ``image``, ``configs``, ``cache`` and ``prereqs``.  A module that
serves one step lives in the package of that step's feature; a package
imports the core and ``runtime`` (the one rule for run-time paths, which
every feature follows), never another package.  tests/test_architecture.py
checks it."""
