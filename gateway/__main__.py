"""`python -m gateway --port P`: run one gateway replica."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn

cli = typer.Typer(add_completion=False)


@cli.command()
def serve(
    port: Annotated[int, typer.Option()] = 8100, host: Annotated[str, typer.Option()] = "127.0.0.1"
) -> None:
    """Run one gateway replica."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        create_app(GatewaySettings()),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    cli()
