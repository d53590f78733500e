"""`python -m gateway --port P`: run one gateway replica."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from storeface.errors import ConfigError

cli = typer.Typer(add_completion=False)


@cli.command()
def serve(
    port: Annotated[int, typer.Option()] = 8100, host: Annotated[str, typer.Option()] = "127.0.0.1"
) -> None:
    """Run one gateway replica."""

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        app = create_app(GatewaySettings())
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    cli()
