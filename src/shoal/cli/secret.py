"""``shoal secret generate``: make a shared session secret."""

from __future__ import annotations

import click

from shoal.config._secrets import generate_secret

__all__ = ["secret_group"]


@click.group("secret")
def secret_group() -> None:
    """Make the shared secret that signs session tokens (auth.secret)."""


@secret_group.command("generate")
def generate() -> None:
    """Print a new random secret for auth.secret / SHOAL__AUTH__SECRET.

    The secret is 86 URL-safe characters made from 64 random bytes
    (Python's `secrets` module). Give every node the same one, through the
    environment or your secret manager rather than the config file.
    """
    click.echo(generate_secret())
