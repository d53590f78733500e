"""FastAPI dependencies of the shard node."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shard_node.node import Node, StoreState


def get_node(request: Request) -> Node:
    node: Node = request.state.node  # from the lifespan's state (shard_node.app.ShardState)
    return node


async def get_store(request: Request, store_id: str) -> StoreState:
    """The hosted store named in the path, ready to serve (or a clear 404/409/503)."""
    return await get_node(request).get(store_id)


NodeDep = Annotated[Node, Depends(get_node)]
Store = Annotated[StoreState, Depends(get_store)]
