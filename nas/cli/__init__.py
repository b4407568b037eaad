"""The `nas` command line: thin typer commands over the layers below."""

from nas.cli.app import app, main

__all__ = ["app", "main"]
