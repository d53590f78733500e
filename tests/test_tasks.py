"""Shutdown stops background tasks even when one swallows its first cancellation."""

from __future__ import annotations

import asyncio

import pytest

from storeface.tasks import stop_tasks


@pytest.mark.anyio
async def test_a_task_that_swallows_one_cancel_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What redis-py's blocking reads do now and then (redis/redis-py#2028): the cancel
    # surfaces as an ordinary error, and a retry loop goes round again.
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    quiet = asyncio.create_task(asyncio.sleep(10))
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task, quiet], grace_s=0.05)
    assert task.cancelled() and quiet.cancelled()
    assert swallowed == 1
    assert "still running" in caplog.text and "stubborn" in caplog.text


@pytest.mark.anyio
async def test_a_task_that_failed_is_collected_not_reraised() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await stop_tasks([task])
    assert isinstance(task.exception(), RuntimeError)
