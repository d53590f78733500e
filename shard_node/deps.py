"""FastAPI dependencies of the shard node."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shard_node.service import ShardState


def get_state(request: Request) -> ShardState:
    state: ShardState = request.app.state.shard
    return state


State = Annotated[ShardState, Depends(get_state)]
