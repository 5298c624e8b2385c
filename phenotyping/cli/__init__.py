"""The command line, one module per command (``python -m phenotyping COMMAND``); see ``phenotyping/__main__.py``.

Each ``phenotyping/cli/<name>.py`` exposes ``register(subparsers)``; ``_common.py`` holds what they share (opening the
store, printing JSON). Commands import the heavy parts of the core inside their ``func``, so ``--help`` stays fast.
"""
