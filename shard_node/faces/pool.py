"""Runs decode, detection and embedding in worker processes, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shard_node.faces.base import Detection, Face, FacePipeline, analyze
from shard_node.faces.registry import make_pipeline
from storeface.errors import PipelineRestarting, ReplicaBusy
from storeface.images import ImageLimits, decode_image

log = logging.getLogger("shard_node.faces.pool")
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


def warm_worker() -> int:
    """Detect and embed once on a synthetic frame, so the first real request pays no
    lazy initialisation (ONNX/dlib allocate on first use); returns this worker's pid."""
    assert _pipeline is not None, "worker not initialised"
    frame = np.full((480, 640, 3), 127, dtype=np.uint8)
    _pipeline.detect(frame)
    _pipeline.embed(frame, [Detection(x=240, y=160, w=160, h=160, score=1.0)])
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
        max_queue: int = 0,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_queue = max_queue or 2 * self.workers
        self.pending = 0  # photos submitted and not answered yet
        self.limits = limits or ImageLimits()
        self.max_faces = max_faces
        self._embedder = embedder
        self._options = dict(options or {})
        self._executor = self._start()
        self.restarts = 0

    def _start(self) -> ProcessPoolExecutor:
        # spawn: forking a process that holds faiss/OpenMP threads is not safe.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self._embedder, self._options),
        )

    async def warm_up(self, embed: bool = True) -> None:
        """Start every worker, load its models and embed one face, before the node says it is
        ready; the pool hands tasks to whichever worker is free, so ask until all answered.
        `embed=False` only starts them (what a node did before: bench/warmstart.py)."""
        loop = asyncio.get_running_loop()
        warm = warm_worker if embed else os.getpid
        warmed: set[int] = set()
        for _ in range(20):
            executor = self._executor
            try:
                pids = await asyncio.gather(
                    *(loop.run_in_executor(executor, warm) for _ in range(self.workers))
                )
            except BrokenProcessPool:  # a worker died while loading: start over on a new pool
                self._replace(executor)
                warmed.clear()
                continue
            warmed.update(pids)
            if len(warmed) >= self.workers:
                return

    async def analyze(
        self, data: bytes, max_faces: int | None = None, *, wait: bool = False
    ) -> Analysis:
        """The faces of one photo; refused at once when the queue is full, unless `wait`
        (background work such as a gallery ingest, which bounds its own concurrency)."""
        if self.pending >= self.max_queue and not wait:
            raise ReplicaBusy(queued=self.pending, max_queue=self.max_queue)
        loop = asyncio.get_running_loop()
        executor = self._executor
        self.pending += 1
        try:
            return await loop.run_in_executor(
                executor, analyze_in_worker, data, self.limits, max_faces or self.max_faces
            )
        except BrokenProcessPool:
            self._replace(executor)
            raise PipelineRestarting() from None
        finally:
            self.pending -= 1

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A worker died: every request on the old pool fails, so start a new one (once,
        however many requests saw it break)."""
        if self._executor is not broken:
            return
        self.restarts += 1
        log.error("a face-pipeline worker died; restarting the pool (restart %d)", self.restarts)
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()

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
