"""The `nas` command line: thin wrappers that parse options, print progress and map errors.

This module holds the one typer `app`, its entry point `main` and how errors become one line;
the commands live by job in the modules beside it (arch, search, review, ship), which
nas/cli/__init__.py imports so that each registers on `app` whenever `nas.cli` is imported.
Commands that only read (`--help`, `summary`, `space show`, `report`, `best`) never import
torch: heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Annotated, Protocol, runtime_checkable

import typer

from nas.errors import UserError
from nas.search import interrupt

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Search for small fully convolutional networks under a hard parameter budget.",
)

# Printed when Ctrl-C stops a command; the search sets its own (how long it ran, how to resume).
_interrupted: list[Callable[[], str]] = [lambda: "interrupted"]
# Stopped quietly by a closed pipe (nas best | head), as cat is.
PRINT_ONLY = ("summary", "space", "best", "report", "predict")


def say(message: str) -> None:
    print(message, flush=True)


def on_interrupt(line: Callable[[], str]) -> None:
    """Have Ctrl-C print `line()` (computed then: it may say how long the command ran)."""
    _interrupted[0] = line


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        import nas

        def of(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        say(f"nas {nas.__version__} (torch {of('torch')}, optuna {of('optuna')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_version,
            help="Print the versions of nas, torch, optuna and Python, and exit.",
        ),
    ] = False,
) -> None:
    if ctx.invoked_subcommand in PRINT_ONLY and hasattr(signal, "SIGPIPE"):
        # these only print: a reader that closed the pipe ends them silently
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


@runtime_checkable
class _ClickError(Protocol):
    """What typer's (click's) own errors have. Named by duck type, not by class: typer vendors
    its own copy of click in recent versions."""

    exit_code: int

    def format_message(self) -> str: ...


def _error(e: BaseException) -> str | None:
    """A command-line mistake typer (click) caught, as one line; None for anything else."""
    if not isinstance(e, _ClickError) or type(e).__name__ in ("Exit", "Abort"):
        return None
    ctx = getattr(e, "ctx", None)
    return e.format_message() + (f" (see {ctx.command_path} --help)" if ctx is not None else "")


def main() -> None:
    """Entry point: a mistake the user can fix is one line on stderr (`error: ...`, exit 2),
    never a traceback; Ctrl-C is one line (exit 130)."""
    code: int = 0
    with interrupt.catching():
        try:
            code = app(standalone_mode=False, prog_name="nas") or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            code = 130
        except Exception as e:  # noqa: BLE001 - typer's own usage errors, whatever its version calls them
            line = _error(e)
            if type(e).__name__ == "NoArgsIsHelpError" and isinstance(e, _ClickError):
                print(e.format_message(), file=sys.stderr)  # `nas` alone: the help, as click shows it
                code = 2
            elif line is not None:
                print(f"error: {line}", file=sys.stderr)
                code = 2
            elif type(e).__name__ == "Abort":  # click's word for a Ctrl-C
                code = 130
            else:
                raise
        if code == 130 or interrupt.happened():  # typer turns a Ctrl-C into exit code 130 without a word
            print(_interrupted[0](), file=sys.stderr)
            code = 130
    sys.exit(code)
