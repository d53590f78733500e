"""Runs decode, detection and embedding in worker processes, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shard_node.faces.base import Face, FacePipeline, analyze
from shard_node.faces.registry import make_pipeline
from storeface.images import ImageLimits, decode_image

_pipeline: FacePipeline | None = None


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """A worker outlives a SIGKILLed shard otherwise, holding its models' memory forever."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def init_worker(embedder: str, options: dict[str, Any]) -> None:
    """Load the pipeline once in a worker process, pinned to one core."""
    global _pipeline
    _die_with_parent()
    # One core per worker: the pool, not the libraries, decides the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    _pipeline = make_pipeline(embedder, options)


@dataclass
class Analysis:
    """The faces of one image and what each stage cost, in ms."""

    faces: list[Face]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)


def analyze_bytes(
    pipeline: FacePipeline, data: bytes, limits: ImageLimits, max_faces: int
) -> Analysis:
    """Decode then analyze one upload; the same code runs in workers and in-process."""
    t0 = time.perf_counter()
    image = decode_image(data, limits)
    timings = {"decode_ms": (time.perf_counter() - t0) * 1000}
    faces = analyze(pipeline, image, max_faces, timings)
    return Analysis(faces=faces, width=image.width, height=image.height, timings=timings)


def analyze_in_worker(data: bytes, limits: ImageLimits, max_faces: int) -> Analysis:
    """`analyze_bytes` with the pipeline `init_worker` loaded into this process."""
    assert _pipeline is not None, "worker not initialised"
    return analyze_bytes(_pipeline, data, limits, max_faces)


def _ping() -> int:
    return os.getpid()


class FacePool:
    """A process pool sized to the cores, each worker holding its own copy of the models."""

    def __init__(
        self,
        embedder: str,
        options: dict[str, Any] | None = None,
        workers: int | None = None,
        limits: ImageLimits | None = None,
        max_faces: int = 10,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.limits = limits or ImageLimits()
        self.max_faces = max_faces
        # spawn: forking a process that holds faiss/OpenMP threads is not safe.
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(embedder, dict(options or {})),
        )

    async def warm_up(self) -> None:
        """Start every worker and load its models before the node says it is ready."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, _ping) for _ in range(self.workers * 2))
        )

    async def analyze(self, data: bytes, max_faces: int | None = None) -> Analysis:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, analyze_in_worker, data, self.limits, max_faces or self.max_faces
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: queued work is dropped, running work gets `timeout` seconds,
        then a worker still busy is terminated (a shutdown must not hang on one frame)."""
        # The executor keeps its worker processes in a private map; nothing public lists them.
        workers = list(getattr(self._executor, "_processes", {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
