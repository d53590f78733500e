"""`python -m shard_node serve|ingest`: run a node group's replica, or ingest a folder."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
import uvicorn
from redis.exceptions import RedisError
from rich.progress import Progress

from shard_node.app import create_app
from shard_node.gallery import (
    IngestReport,
    chain_indexes,
    ingest_folder,
    ingest_threshold,
    load_index,
    photos_by_person,
)
from shard_node.index import StoreIndex
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


def _fail(message: str, code: int) -> NoReturn:
    """End the command with a one-line error on stderr, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@cli.command()
def ingest(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
    store: Annotated[str, typer.Option(help="store id in stores.yaml")],
    largest: Annotated[bool, typer.Option(help="take the largest face of group photos")] = False,
    workers: Annotated[int, typer.Option(help="0 = one per core")] = 0,
    everywhere: Annotated[
        bool,
        typer.Option(
            help="look for each person in every store of the chain built with the same "
            "embedder (read whole from Redis: memory and time grow with the chain); "
            "default: this store only"
        ),
    ] = False,
) -> None:
    """Ingest a <person>/<photo> folder into a store, straight into Redis."""

    settings = ShardSettings(node_id="")
    try:
        stores = load_stores(settings.stores_file)
    except ConfigError as exc:
        _fail(exc.message, 2)
    cfg = stores.store(store)
    if cfg is None:
        known = ", ".join(s.id for s in stores.stores)
        _fail(f"store {store!r} is not in {settings.stores_file} (stores: {known})", 2)
    people = photos_by_person(folder)
    if not people:
        _fail(f"no photos: {folder} has no <person>/<photo> subfolders (one folder per person)", 1)
    group = stores.group_of(store)
    total = sum(len(p) for p in people.values())

    async def run() -> IngestReport:
        async with open_runtime(settings, group, workers=workers or None) as rt:
            recorded = await rt.db.claim_embedder(cfg.id, rt.info.identity, cfg.embedder_options)
            if recorded != rt.info.identity:
                _fail(f"store {cfg.id} holds {recorded} embeddings, not {rt.info.identity}", 2)
            # The store's faces as they are now, so a person it already knows keeps one FaceId.
            index = await load_index(rt.db, rt.info, cfg.id)
            others: dict[str, StoreIndex] = {}
            if everywhere:
                others, left_out = await chain_indexes(rt.db, rt.info, stores.compatible(cfg))
                for sid in left_out:
                    typer.echo(f"not searched: {sid} holds another embedder's faces", err=True)

            def added(gen: int, vec_id: int, face_id: int, embedding: np.ndarray) -> None:
                index.add([vec_id], [face_id], embedding)

            with Progress() as progress:
                task = progress.add_task(f"ingesting into {cfg.id}", total=total)
                return await ingest_folder(
                    rt.db,
                    rt.pool,
                    cfg.id,
                    rt.info,
                    folder,
                    largest=largest,
                    min_size=cfg.min_face_size,
                    progress=lambda n: progress.advance(task, n),
                    index=index,
                    threshold=ingest_threshold(rt.info, cfg, [index, *others.values()]),
                    on_added=added,
                    others=others,
                )

    try:
        report = asyncio.run(run())
    except RedisError as exc:
        _fail(f"Redis at {settings.redis_url}: {exc} (is `make run` running?)", 1)
    typer.echo(report.details())
    if not (report.added or report.already):
        _fail(f"nothing was ingested into {cfg.id}: every photo was skipped", 1)


if __name__ == "__main__":
    cli()
