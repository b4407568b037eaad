"""The errors a user can fix: each becomes one line on stderr and exit code 2 (nas.cli.main)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment, said in one line that names the problem and the fix."""


class SpecError(UserError, ValueError):
    """A bad architecture, space, setting or file: says where, which key and what is wrong."""

    def __init__(self, where: str, key: str, problem: str):
        self.where, self.key, self.problem = where, key, problem
        super().__init__(f"{where}: {key}: {problem}")


class DataError(UserError, RuntimeError):
    """Missing, corrupt or unreachable data; the message says what to do."""


class UsageError(UserError):
    """A bad combination of options."""
