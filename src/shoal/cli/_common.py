"""What every ``shoal`` command shares: exit codes, error reporting, running coroutines.

Command modules import these from here (never from :mod:`shoal.cli.main`,
which imports the command modules: no cycle).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click

from shoal.errors import (
    ConfigError,
    ShoalError,
    StoreAuthError,
    StoreUnavailable,
    UnsupportedBackend,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_STORE_UNAVAILABLE",
    "ShoalGroup",
    "exit_code_for",
    "handle_errors",
    "report_error",
    "run_async",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_STORE_UNAVAILABLE = 3

P = ParamSpec("P")
T = TypeVar("T")


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, ConfigError | UnsupportedBackend | StoreAuthError):
        return EXIT_BAD_INPUT
    if isinstance(exc, StoreUnavailable):
        return EXIT_STORE_UNAVAILABLE
    return EXIT_FAILURE


def report_error(exc: BaseException) -> None:
    """Print ``exc`` as ``error: ...`` lines (one per line of its message) on stderr."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    for line in lines:
        click.echo(f"error: {line}", err=True)


class ShoalGroup(click.Group):
    """A click group that reports :class:`~shoal.ShoalError` as ``error:`` lines
    with a documented exit code, for every command below it."""

    group_class = type  # sub-groups made with .group() are ShoalGroups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShoalError as exc:
            report_error(exc)
            ctx.exit(exit_code_for(exc))

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "shoal")
        return super().main(*args, **kwargs)


def handle_errors(func: Callable[P, T]) -> Callable[P, T]:
    """The same error handling for a command used outside :data:`main`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except ShoalError as exc:
            report_error(exc)
            raise click.exceptions.Exit(exit_code_for(exc)) from None

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a command (a fresh event loop per call)."""
    return asyncio.run(coro)
