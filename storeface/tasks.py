"""Stopping background tasks at shutdown without trusting each one to stop at the first ask."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable

log = logging.getLogger("storeface.tasks")


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], grace_s: float = 5.0) -> None:
    """Cancel the tasks and wait until every one has ended, cancelling again every `grace_s`.

    One cancellation is not always enough: a task inside a retry loop can have it turned into
    an ordinary error (a timeout that fired at the same moment) and go round again, and a
    shutdown that waits on it once waits forever. Each straggler is logged with its stack."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            stack = io.StringIO()
            task.print_stack(file=stack)
            log.warning(
                "task %s still running %.0fs after cancel:\n%s", task, grace_s, stack.getvalue()
            )
    for task in tasks:  # what they raised was logged where it happened; mark it seen
        if not task.cancelled():
            task.exception()
