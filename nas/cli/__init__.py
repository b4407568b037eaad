"""The `nas` command line: thin typer commands over the layers below.

Importing the command modules registers their commands on `app`, in the order `nas --help`
lists them (summary, train, search, worker, best, dashboard, report, export, predict; then space).
"""

from nas.cli.app import app, main

# isort: off
from nas.cli import arch, search, review, ship  # noqa: F401 - imported to register their commands
# isort: on

__all__ = ["app", "main"]
