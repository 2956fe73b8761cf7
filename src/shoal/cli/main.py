"""The ``shoal`` command line.

Every command hangs off :data:`main` (a :class:`ShoalGroup`), which turns any
:class:`~shoal.ShoalError` escaping a command into ``error: ...`` lines on
stderr and an exit code — never a traceback for bad input:

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     any other failure
2     bad configuration or input (also click's own usage errors)
3     the store cannot be reached
====  =====================================================================

To add a command elsewhere::

    from shoal.cli._common import run_async
    from shoal.cli.main import main

    @click.command()
    def status() -> None: ...

    main.add_command(status)

Commands run coroutines with :func:`run_async`. Sub-groups made with
``main.group()`` are :class:`ShoalGroup` too.
"""

from __future__ import annotations

import asyncio
import json
from importlib import metadata
from pathlib import Path

import click

from shoal.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    ShoalGroup,
    exit_code_for,
    handle_errors,
    report_error,
    run_async,
)
from shoal.config import NodeConfig, load_config
from shoal.errors import ConfigError, StoreUnavailable

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_STORE_UNAVAILABLE",
    "ShoalGroup",
    "exit_code_for",
    "handle_errors",
    "main",
    "report_error",
    "run_async",
]


def _version() -> str:
    try:
        return metadata.version("shoal")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@click.group(cls=ShoalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="shoal")
def main() -> None:
    """Shoal: turn several running copies of a service into one cluster.

    Exit codes: 0 ok, 1 other failure, 2 bad configuration or input,
    3 store unavailable.
    """


@main.group("config")
def config_group() -> None:
    """Check node configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.option(
    "--connect", is_flag=True, help="Also open the configured store and report reachability."
)
@click.option(
    "--app", "app_spec", metavar="MODULE:APP", default=None,
    help="Also check the configuration against this App, as `shoal run` does (every "
         "duties: key must name a duty, family or pool of it; for_each params must be set).",
)
def config_check(file: Path, as_json: bool, connect: bool, app_spec: str | None) -> None:
    """Validate FILE (plus SHOAL__* environment variables) and print the
    effective configuration, secrets masked.

    Exits 2 listing every problem when the configuration is invalid, and 3
    with --connect when the store cannot be reached.
    """
    config = load_config(file)
    if app_spec is not None:
        from shoal.cli.run import AppImportError, import_app

        try:
            app = import_app(app_spec)
        except AppImportError as exc:
            raise ConfigError(str(exc)) from None
        app.check_config(config)
    if as_json:
        click.echo(json.dumps(config.masked(), indent=2))
    else:
        click.echo(config.to_yaml(), nl=False)
    if connect:
        click.echo(f"ok: {run_async(_probe_store(config))}", err=True)


async def _probe_store(config: NodeConfig) -> str:
    """Open the store, read its revision, close it; a one-line report."""
    from shoal.store.factory import describe, open_store, open_timeout

    where, limit = describe(config), open_timeout(config)
    try:
        async with asyncio.timeout(limit):
            store = await open_store(config)
            try:
                revision = await store.revision()
            finally:
                await store.aclose()
    except TimeoutError:
        raise StoreUnavailable(f"store {where} did not answer within {limit:g} s") from None
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"store {where} is unreachable: {exc}") from exc
    return f"store {where} is reachable (revision {revision})"


def _register_run() -> None:
    from shoal.cli.run import run

    main.add_command(run)


_register_run()


def _register_secret() -> None:
    from shoal.cli.secret import secret_group

    main.add_command(secret_group)


_register_secret()


def _register_state() -> None:
    from shoal.cli.state import state_group

    main.add_command(state_group)


_register_state()


def _register_surfaces() -> None:
    from shoal.cli.demo import demo
    from shoal.cli.etcd_cmd import etcd_group
    from shoal.cli.node_cmd import node_group
    from shoal.cli.partitions_cmd import partitions_group
    from shoal.cli.schedule_cmd import schedule_group
    from shoal.cli.status import status

    for command in (demo, status, node_group, etcd_group, schedule_group, partitions_group):
        main.add_command(command)


_register_surfaces()


if __name__ == "__main__":
    main()
