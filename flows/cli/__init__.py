"""The ``linkstyle`` command line (``flows.cli.main``)."""

from flows.cli.main import entry, main

__all__ = ["entry", "main"]
