"""``python -m flows.cli``: the ``linkstyle`` command."""

import sys

from flows.cli.main import entry

sys.exit(entry())
