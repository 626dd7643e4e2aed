"""The ``linkstyle`` command line: an edge that reads configuration and runs flows.

One module per command group: ``run`` (run, validate, counterfactual), ``inspect`` (status,
runs, tables, report, unit), ``explore``, ``clean``, ``config``, ``labels``, ``toy``.
``common`` holds what they share (the config and root options, the config they resolve to),
``errors`` how a mistake is shown, ``main`` the parser and ``main``/``entry``.
"""

from flows.cli.main import entry, main

__all__ = ["entry", "main"]
