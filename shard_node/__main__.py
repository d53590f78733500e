"""`python -m shard_node serve|ingest`: run a node group's replica, or ingest a folder."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.progress import Progress

from shard_node.app import create_app
from shard_node.gallery import ingest_folder, photos_by_person
from shard_node.runtime import open_runtime
from shard_node.settings import ShardSettings
from storeface.errors import ConfigError
from storeface.stores import load_stores

cli = typer.Typer(add_completion=False, no_args_is_help=True)


@cli.command()
def serve(
    node: Annotated[
        str, typer.Option(help="node group id in stores.yaml (a store without node: is one)")
    ],
    port: Annotated[int, typer.Option()] = 9100,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
) -> None:
    """Run one replica of a shard node group: it hosts every store of the group."""

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        app = create_app(ShardSettings(node_id=node))
    except ConfigError as exc:  # an unknown node or embedder, a bad file
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


@cli.command()
def ingest(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
    store: Annotated[str, typer.Option(help="store id in stores.yaml")],
    largest: Annotated[bool, typer.Option(help="take the largest face of group photos")] = False,
    workers: Annotated[int, typer.Option(help="0 = one per core")] = 0,
) -> None:
    """Ingest a <person>/<photo> folder into a store, straight into Redis."""

    settings = ShardSettings(node_id="")
    stores = load_stores(settings.stores_file)
    cfg = stores.store(store)
    if cfg is None:
        raise typer.BadParameter(f"store {store!r} is not in {settings.stores_file}")
    group = stores.group_of(store)
    total = sum(len(p) for p in photos_by_person(folder).values())

    async def run() -> None:
        async with open_runtime(settings, group, workers=workers or None) as rt:
            recorded = await rt.db.claim_embedder(cfg.id, rt.info.name)
            if recorded != rt.info.name:
                raise typer.BadParameter(f"store {cfg.id} holds {recorded} embeddings")
            with Progress() as progress:
                task = progress.add_task(f"ingesting into {cfg.id}", total=total)
                report = await ingest_folder(
                    rt.db,
                    rt.pool,
                    cfg.id,
                    rt.info,
                    folder,
                    largest=largest,
                    min_size=cfg.min_face_size,
                    progress=lambda n: progress.advance(task, n),
                )
        typer.echo(report.summary())
        for path, why in report.skipped:
            typer.echo(f"  skipped {path}: {why}")

    asyncio.run(run())


if __name__ == "__main__":
    cli()
