"""Shared helpers for the benchmarks: machine description, percentiles, tables, JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the working tree had changes (read-only git calls)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    return {"git_commit": head, "git_modified_files": len(dirty.splitlines())}


def machine_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and when a result was measured: cores, CPU, memory, load, library versions."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "load_average_at_start": load,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "faiss": _version("faiss"),
        "opencv": _version("cv2"),
        "dlib": _version("dlib"),
        "command": shlex.join(["python", "-m", _main_module(), *sys.argv[1:]]),
        **git_state(),
    }
    if extra:
        info.update(extra)
    return info


def _main_module() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).name


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(arr, qs)]


def summarize_ms(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median, p90, p99, mean and count of a list of millisecond timings."""
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = percentiles(arr, (50, 90, 99))
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": float(arr.mean()) if arr.size else float("nan"),
        "n": int(arr.size),
    }


def time_each(fn: Callable[[int], object], count: int) -> np.ndarray:
    """Call fn(i) for i in range(count), returning each call's duration in ms."""
    out = np.empty(count, dtype=np.float64)
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as sw: ...` then sw[0] is the elapsed seconds."""
    box: list[float] = [0.0]
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t0


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if v != v:  # NaN
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = True) -> str:
    """A Markdown table (aligned, so it also reads well in a terminal)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(items: Sequence[str]) -> str:
        padded = [
            (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(items)
        ]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded)

    out = [line(list(headers))]
    if markdown:
        out.append(
            "|"
            + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths))
            + "|"
        )
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        v = float(obj)
        return None if v != v else v
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(name: str, payload: dict[str, Any], directory: Path | None = None) -> Path:
    """Write bench/results/<name>.json (git-ignored) and return its path."""
    out_dir = directory or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def log(message: str) -> None:
    """Progress to stderr, so stdout stays the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
