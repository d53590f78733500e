"""The `storeface` command: local vectors files (vectorize, search, verify) and cluster calls."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import httpx
import numpy as np
import typer
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shard_node.faces.base import Face, FacePipeline, Metric
from shard_node.faces.pool import FacePool, analyze_bytes
from shard_node.faces.registry import embedder_info, make_pipeline
from shard_node.gallery import photos_by_person
from storeface.distances import distances
from storeface.embedders import AUTO, recognizer_model, resolve_embedder
from storeface.errors import ModelFetchFailed, NoFace, StorefaceError
from storeface.images import ImageLimits
from storeface.paths import ROOT, models_dir
from tools.fetch_models import DEFAULT_PACK, PACKS, fetch_all, relocate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Storeface: vectorize, search and verify faces locally, or talk to a cluster.",
)

DEFAULT_URL = "http://127.0.0.1:8080"
VECTORS_FORMAT = "storeface-vectors/1"
KEYS_FILE_ENV = "STOREFACE_KEYS_FILE"
DEFAULT_KEYS_FILE = ROOT / ".run" / "keys.yaml"  # what `make run` writes

EmbedderOpt = Annotated[str, typer.Option("--embedder", "-e", help="dlib or arcface")]
UrlOpt = Annotated[str, typer.Option(envvar="STOREFACE_URL", help="the gateway's base URL")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=["STOREFACE_API_KEY", "STOREFACE_ADMIN_KEY"],
        show_envvar=True,
        help="API key; without one, the admin_key of $STOREFACE_KEYS_FILE or of the "
        ".run/keys.yaml that `make run` writes",
    ),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error on stderr and a non-zero exit status."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _people(folder: Path) -> dict[str, list[Path]]:
    """The folder's photos by person, or exit 1: a folder without them is nothing to do."""
    people = photos_by_person(folder)
    if not people:
        _fail(f"no photos: {folder} has no <person>/<photo> subfolders (one folder per person)")
    return people


def resolve_api_key(given: str | None, url: str = DEFAULT_URL) -> str:
    """--api-key (or its env vars), else — for a cluster on this machine only — the admin
    key of the keys file `make run` wrote."""
    if given:
        return given
    hint = "pass --api-key, set STOREFACE_API_KEY, or start the cluster with `make run`"
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        # the local admin key is never sent to another machine's gateway
        raise typer.BadParameter(f"no API key for {url}: {hint}", param_hint="'--api-key'")
    path = Path(os.environ.get(KEYS_FILE_ENV) or DEFAULT_KEYS_FILE)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise typer.BadParameter(
            f"no API key, and no keys file at {path}: {hint}", param_hint="'--api-key'"
        ) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read the keys file {path}: {exc}") from exc
    key = doc.get("admin_key") if isinstance(doc, dict) else None
    if not key:
        raise typer.BadParameter(f"the keys file {path} holds no admin_key: {hint}")
    return str(key)


# --- vectors files -----------------------------------------------------------------------


@dataclass
class Vectors:
    """One embedding per photo, with what is needed to search it: the embedder and metric."""

    people: list[str]
    paths: list[str]
    embeddings: np.ndarray
    embedder: str
    dim: int
    metric: Metric

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(
                f,
                format=np.array(VECTORS_FORMAT),
                people=np.array(self.people, dtype=str),
                paths=np.array(self.paths, dtype=str),
                embeddings=self.embeddings.astype(np.float32).reshape(-1, self.dim),
                embedder=np.array(self.embedder),
                dim=np.array(self.dim),
                metric=np.array(self.metric),
            )

    @classmethod
    def load(cls, path: Path) -> Vectors:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != VECTORS_FORMAT:
                raise typer.BadParameter(f"{path} is not a storeface vectors file")
            metric = str(z["metric"])
            if metric not in ("l2", "cosine"):
                raise typer.BadParameter(f"{path} has an unknown metric {metric!r}")
            return cls(
                people=[str(p) for p in z["people"]],
                paths=[str(p) for p in z["paths"]],
                embeddings=z["embeddings"].astype(np.float32),
                embedder=str(z["embedder"]),
                dim=int(z["dim"]),
                metric="cosine" if metric == "cosine" else "l2",
            )


@dataclass
class VectorizeReport:
    """A vectors file in the making, and what happened to the photos left out of it."""

    vectors: Vectors
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error code)
    several: list[str] = field(default_factory=list)  # photos whose largest face was taken

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _, why in self.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"
        v = self.vectors
        return (
            f"{len(v.paths)} photos of {len(set(v.people))} people vectorized with {v.embedder} "
            f"({v.dim}-d, {v.metric}); {len(self.skipped)} skipped ({why}); "
            f"{len(self.several)} had several faces"
        )


def vectorize_folder(
    folder: Path,
    embedder: str = "dlib",
    workers: int | None = None,
    skip_multiple: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VectorizeReport:
    """Embed every photo of a `<person>/<photo>` folder in the project's process pool."""

    info = embedder_info(embedder)
    photos = [(person, p) for person, ps in photos_by_person(folder).items() for p in ps]
    results = asyncio.run(_analyze_all(embedder, [p for _, p in photos], workers, progress))
    empty = np.zeros((0, info.dim), dtype=np.float32)
    report = VectorizeReport(Vectors([], [], empty, info.name, info.dim, info.metric))
    embeddings: list[np.ndarray] = []
    for (person, path), result in zip(photos, results, strict=True):
        if isinstance(result, str):
            report.skipped.append((str(path), result))
            continue
        if len(result) > 1:
            if skip_multiple:
                report.skipped.append((str(path), "multiple_faces"))
                continue
            report.several.append(str(path))
        report.vectors.people.append(person)
        report.vectors.paths.append(str(path.absolute()))
        embeddings.append(result[0].embedding)
    if embeddings:
        report.vectors.embeddings = np.vstack(embeddings).astype(np.float32)
    return report


async def _analyze_all(
    embedder: str,
    paths: list[Path],
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> list[list[Face] | str]:
    """Each photo's faces (the two largest are enough to tell one from several), or an
    error code."""

    pool = FacePool(embedder, workers=workers, max_faces=2)
    limit = asyncio.Semaphore(pool.workers * 2)

    async def one(path: Path) -> list[Face] | str:
        async with limit:
            try:
                faces = (
                    await pool.analyze(await asyncio.to_thread(path.read_bytes), wait=True)
                ).faces
                return faces or NoFace.code
            except StorefaceError as exc:
                return exc.code
            except OSError:
                return "read_error"
            finally:
                if progress:
                    progress(1)

    try:
        return list(await asyncio.gather(*(one(p) for p in paths)))
    finally:
        pool.close()


# --- local search and verification -------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    rank: int
    person: str
    distance: float
    path: str


def embed_largest(pipeline: FacePipeline, path: Path) -> Face:
    """The largest face of a photo, or NoFace; decode errors raise their StorefaceError."""

    faces = analyze_bytes(pipeline, path.read_bytes(), ImageLimits(), max_faces=1).faces
    if not faces:
        raise NoFace(f"no face was found in {path}")
    return faces[0]


def distance(a: np.ndarray, b: np.ndarray, metric: Metric) -> float:

    return float(distances(a.reshape(1, -1), b.reshape(1, -1), metric)[0, 0])


def search_vectors(vectors: Vectors, query: np.ndarray, k: int) -> tuple[list[Hit], float]:
    """Exact top-k by the file's metric, and the search time in ms."""

    t0 = time.perf_counter()
    d = distances(query.reshape(1, -1), vectors.embeddings, vectors.metric)[0]
    k = min(k, len(d))
    top = np.argpartition(d, k - 1)[:k] if k else np.array([], dtype=int)
    top = top[np.argsort(d[top], kind="stable")]
    ms = (time.perf_counter() - t0) * 1000
    hits = [
        Hit(rank + 1, vectors.people[i], float(d[i]), vectors.paths[i])
        for rank, i in enumerate(top)
    ]
    return hits, ms


def _load_rgb(path: str) -> np.ndarray | None:

    try:
        with Image.open(path) as img:
            return np.asarray((ImageOps.exif_transpose(img) or img).convert("RGB"))
    except OSError:
        return None


def plot_matches(
    query: np.ndarray, box: tuple[int, int, int, int], hits: list[Hit], search_ms: float
) -> Figure:
    """The query (its face boxed) beside its matches, each titled rank, person, distance."""

    fig = Figure(figsize=(2.6 * (len(hits) + 1), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(hits) + 1, squeeze=False)[0]
    axes[0].imshow(query)
    x, y, w, h = box
    axes[0].add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=2))
    axes[0].set_title(f"query\nsearch {search_ms:.2f} ms", fontsize=9)
    for ax, hit in zip(axes[1:], hits, strict=True):
        photo = _load_rgb(hit.path)
        if photo is not None:
            ax.imshow(photo)
        else:
            ax.text(0.5, 0.5, "photo missing", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(
            f"#{hit.rank} {hit.person.replace('_', ' ')}\nd={hit.distance:.3f}", fontsize=9
        )
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@contextlib.contextmanager
def _face_errors() -> Iterator[None]:
    """A photo the pipeline cannot use ends the command with its error code, not a trace."""

    try:
        yield
    except StorefaceError as exc:
        typer.echo(f"error {exc.code}: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def _search_local(
    image: Path, top_k: int, vectors_file: Path, plot: Path | None, as_json: bool
) -> None:

    vectors = Vectors.load(vectors_file)
    if not vectors.paths:
        raise typer.BadParameter(f"{vectors_file} holds no vectors", param_hint="'--vectors'")
    with _face_errors():
        pipeline = make_pipeline(vectors.embedder)
        face = embed_largest(pipeline, image)
    hits, ms = search_vectors(vectors, face.embedding, top_k)
    if as_json:
        typer.echo(json.dumps({"search_ms": ms, "matches": [asdict(h) for h in hits]}))
    else:
        table = Table(title=f"{image.name}: top {len(hits)} of {len(vectors.paths)} ({ms:.2f} ms)")
        for col in ("rank", "person", "distance", "path"):
            table.add_column(col)
        for h in hits:
            table.add_row(str(h.rank), h.person, f"{h.distance:.4f}", h.path)
        Console().print(table)
    if plot is not None:
        query = _load_rgb(str(image))
        assert query is not None  # the pipeline has just decoded it
        try:
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_matches(query, face.box, hits, ms).savefig(plot)
        except OSError as exc:
            _fail(f"cannot write the plot {plot}: {exc}")
        typer.echo(f"plot written to {plot}", err=as_json)  # stdout stays one JSON document


def _check_plot(plot: Path | None, store: str | None) -> None:
    """--plot is refused up front where no file could be written, never ignored."""
    if plot is None:
        return
    if store is not None:
        raise typer.BadParameter(
            "cannot be used with --store: the cluster keeps no photos (embeddings only), "
            "so its matches have nothing to draw; plot against a --vectors file",
            param_hint="'--plot'",
        )
    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if plot.suffix.lower().lstrip(".") not in kinds:
        raise typer.BadParameter(
            f"{plot}: name an image type by its suffix ({', '.join(sorted(kinds))})",
            param_hint="'--plot'",
        )


@app.command()
def vectorize(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="<person>/<photo>")],
    out: Annotated[Path, typer.Option("--out", "-o", help="vectors file (.npz) to write")],
    embedder: EmbedderOpt = "dlib",
    workers: Annotated[int, typer.Option(min=0, help="processes; 0 = one per core")] = 0,
    skip_multiple: Annotated[
        bool, typer.Option(help="skip photos with several faces instead of taking the largest")
    ] = False,
) -> None:
    """Embed every photo of a folder in parallel into a vectors file (largest face of each)."""

    total = sum(len(ps) for ps in _people(folder).values())
    with Progress() as progress:
        task = progress.add_task(f"vectorizing with {embedder}", total=total)
        report = vectorize_folder(
            folder, embedder, workers or None, skip_multiple, lambda n: progress.advance(task, n)
        )
    typer.echo(report.summary())
    for path, why in report.skipped:
        typer.echo(f"  skipped {path}: {why}")
    if not report.vectors.paths:
        _fail(f"no photo gave a face to vectorize; {out} was not written")
    report.vectors.save(out)
    if report.several and not skip_multiple:
        typer.echo(f"  the largest face was taken in {len(report.several)} photos with several")
    typer.echo(f"wrote {out}")


@app.command()
def search(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 5,
    vectors: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="search this vectors file")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="draw the query and its matches into this image (.jpg, .png, ...); "
            "with --vectors only: refused with --store, whose matches have no photos"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    store: Annotated[str | None, typer.Option(help="search a cluster store instead")] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Top-k matches of the image's largest face, in a vectors file or a cluster store."""
    if (vectors is None) == (store is None):
        raise typer.BadParameter("give exactly one of --vectors FILE or --store STORE")
    _check_plot(plot, store)
    if vectors is not None:
        _search_local(image, top_k, vectors, plot, as_json)
        return
    with _gateway(url, api_key) as client:
        body = _call(
            client,
            "POST",
            "/v1/search",
            files={"image": _upload(image)},
            data={"store_id": store, "top_k": str(top_k)},
        )
    _print_remote_matches(body, as_json)


@app.command(
    epilog="Exit status: 0 same person, 1 different people, 2 a usage error or a photo "
    "without a usable face."
)
def verify(
    a: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    b: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    embedder: EmbedderOpt = "dlib",
) -> None:
    """Whether the largest faces of two photos are the same person, by the embedder's threshold."""

    with _face_errors():
        pipeline = make_pipeline(embedder)
        fa, fb = embed_largest(pipeline, a), embed_largest(pipeline, b)
    info = pipeline.info
    d = distance(fa.embedding, fb.embedding, info.metric)
    same = d <= info.threshold
    typer.echo(
        f"{'same person' if same else 'different people'}: distance {d:.4f} "
        f"{'<=' if same else '>'} threshold {info.threshold:.4f} ({info.name}, {info.metric})"
    )
    if not same:
        raise typer.Exit(1)  # scripts test the verdict by the exit status


# --- cluster commands --------------------------------------------------------------------


class GatewayError(Exception):
    """The gateway answered with an error, or could not be reached."""


@contextlib.contextmanager
def _gateway(url: str, api_key: str | None) -> Iterator[httpx.Client]:

    headers = {"X-API-Key": resolve_api_key(api_key, url)}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
            yield client
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; a transport failure or an error status raises GatewayError."""

    try:
        resp = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise GatewayError(f"cannot reach {client.base_url}: {exc}") from exc
    if resp.is_error:
        raise GatewayError(_error_text(resp))
    return resp.json() if resp.content else {}


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return f"{resp.status_code} {err.get('code', 'error')}: {err.get('message', resp.text)}"
    except (ValueError, AttributeError):
        return f"{resp.status_code}: {resp.text[:200]}"


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{resp.status_code}"


def _upload(path: Path) -> tuple[str, bytes, str]:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return (path.name, path.read_bytes(), mime)


def _print_remote_matches(body: Any, as_json: bool) -> None:

    if as_json:
        typer.echo(json.dumps(body))
        return
    for n, face in enumerate(body.get("faces", []), 1):
        table = Table(title=f"face {n} at {face.get('box')}")
        for col in ("rank", "face_id", "label", "store", "distance"):
            table.add_column(col)
        for rank, m in enumerate(face.get("matches", []), 1):
            table.add_row(
                str(rank),
                str(m.get("face_id")),
                str(m.get("label") or ""),
                str(m.get("store_id")),
                f"{m.get('distance', float('nan')):.4f}",
            )
        Console().print(table)
    if not body.get("faces"):
        typer.echo("no faces")


@dataclass
class EnrollReport:
    people: dict[str, int] = field(default_factory=dict)  # person → FaceId
    added: int = 0
    duplicate: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # people the store (or chain) already knew: their first photo joined an existing
    # FaceId → (FaceId, distance, the store it was found in)
    known: dict[str, tuple[int, float, str]] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.people)} people, {self.added} photos added, {self.duplicate} duplicates, "
            f"{len(self.skipped)} skipped, {len(self.known)} already known under a FaceId"
        )


def enroll_person(
    client: httpx.Client,
    store: str,
    person: str,
    photos: list[Path],
    report: EnrollReport,
    everywhere: bool = False,
) -> None:
    """Enroll one person's photos: the first accepted photo makes (or finds, in the store or
    with `everywhere` in the chain) the FaceId, the others join it; the folder says they are
    one person, so they are filed with force."""
    face_id: int | None = None
    for photo in photos:
        data = {"label": person}
        if face_id is not None:
            data |= {"face_id": str(face_id), "force": "true"}
        elif everywhere:
            data["everywhere"] = "true"
        try:
            resp = client.post(
                f"/v1/stores/{store}/faces", files={"image": _upload(photo)}, data=data
            )
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach {client.base_url}: {exc}") from exc
        if 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404):
            report.skipped.append((str(photo), _error_code(resp)))
            continue
        if resp.is_error:
            raise GatewayError(_error_text(resp))
        body = resp.json()
        if face_id is None and not body.get("created", True) and body.get("distance") is not None:
            found_in = str(body.get("matched_store") or store)
            report.known[person] = (int(body["face_id"]), float(body["distance"]), found_in)
        face_id = int(body["face_id"])
        report.people[person] = face_id
        report.duplicate += bool(body.get("duplicate"))
        report.added += not body.get("duplicate")


@app.command()
def enroll(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="<person>/<photo>")],
    store: Annotated[str, typer.Option(help="store id")],
    everywhere: Annotated[
        bool,
        typer.Option(
            help="look for each person in every store of the chain that runs the same "
            "embedder (default: this store only): one FaceId per person chain-wide"
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Enroll a <person>/<photo> folder into a cluster store, one FaceId per person."""

    people = _people(folder)
    report = EnrollReport()
    with _gateway(url, api_key) as client, Progress() as progress:
        task = progress.add_task(f"enrolling into {store}", total=len(people))
        for person, photos in people.items():
            enroll_person(client, store, person, photos, report, everywhere)
            progress.advance(task)
    typer.echo(report.summary())
    for person, (fid, dist, found_in) in sorted(report.known.items()):
        where = "" if found_in == store else f" in {found_in}"
        typer.echo(f"  {person}: already known as FaceId {fid}{where} (distance {dist:.3f})")
    for path, why in report.skipped:
        typer.echo(f"  skipped {path}: {why}")
    if not report.people:
        _fail(f"nothing was enrolled into {store}: every photo was skipped")


def _day(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a YYYY-MM-DD date") from exc


def stats_rows(body: Any) -> list[dict[str, Any]]:
    """The per-day rows of a stats answer: a `days` list, or a mapping of day → counters."""
    days = body.get("days", body) if isinstance(body, dict) else body
    if isinstance(days, dict):
        return [{"day": k, **v} for k, v in sorted(days.items()) if isinstance(v, dict)]
    return [d for d in days if isinstance(d, dict)] if isinstance(days, list) else []


@app.command()
def stats(
    store: Annotated[str, typer.Option(help="store id")],
    from_: Annotated[str | None, typer.Option("--from", help="first day, YYYY-MM-DD")] = None,
    to: Annotated[str | None, typer.Option("--to", help="last day, YYYY-MM-DD")] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """A store's visits by day: PV, UV, new and returning."""

    params = {k: v for k, v in (("from", _day(from_)), ("to", _day(to))) if v is not None}
    with _gateway(url, api_key) as client:
        body = _call(client, "GET", f"/v1/stores/{store}/stats", params=params)
    rows = stats_rows(body)
    if not rows:
        typer.echo(json.dumps(body, indent=2))
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=f"store {store}")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console().print(table)


@app.command()
def erase(
    face_id: Annotated[int | None, typer.Argument(help="the FaceId to erase everywhere")] = None,
    photo: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="erase whoever this photo shows"),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Erase a person everywhere (every store, every vector): by FaceId, or by a photo of
    them (every FaceId within a strict distance of its face). Exits 1 if nobody matched."""
    if (face_id is None) == (photo is None):
        raise typer.BadParameter("give a FaceId or --photo, not both")
    with _gateway(url, api_key) as client:
        if photo is not None:
            body = _call(client, "POST", "/v1/erase", files={"image": _upload(photo)})
            for e in body["erased"]:
                stores = ", ".join(e["stores"]) or "no store"
                typer.echo(f"erased face {e['face_id']} (distance {e['distance']:.3f}): {stores}")
            return
        body = _call(client, "DELETE", f"/v1/faces/{face_id}")
    typer.echo(f"erased face {face_id}: {json.dumps(body)}")


retention_app = typer.Typer(no_args_is_help=True, help="Visitor retention.")
app.add_typer(retention_app, name="retention")


@retention_app.command("sweep")
def retention_sweep(
    older_than_days: Annotated[
        int | None,
        typer.Option(min=1, help="this run only: erase visitors unseen this long, every store"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="count what would be erased")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Erase unbound visitors unseen for their store's `visitor_retention_days` now."""
    body: dict[str, Any] = {"dry_run": dry_run}
    if older_than_days is not None:
        body["older_than_days"] = older_than_days
    with _gateway(url, api_key) as client:
        done = _call(client, "POST", "/v1/retention/sweep", json=body)
    if done["dry_run"]:
        typer.echo(f"dry run: {done['expired']} of {done['scanned']} visitors would be erased")
    else:
        typer.echo(f"erased {done['erased']} FaceIds ({done['scanned']} visitors looked at)")


@app.command(
    "fetch-models",
    epilog="Exit status: 0 all files in place, 1 a download failed or did not match its "
    "pinned size or sha256 (nothing is written then), 2 a usage error.",
)
def fetch_models(
    dest: Annotated[
        Path | None,
        typer.Option(
            help="where the files go (default: $STOREFACE_MODELS_DIR, else ../shared/models)"
        ),
    ] = None,
    pack: Annotated[
        str,
        typer.Option(
            help="opencv: YuNet + SFace (MIT, Apache-2.0); insightface: YuNet + buffalo_s "
            "w600k_mbf (non-commercial research only; its zip is downloaded again on every "
            "run, as only the zip's hash is pinned)"
        ),
    ] = DEFAULT_PACK,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror", "--base-url", help="a mirror holding the same file names (an http URL)"
        ),
    ] = None,
) -> None:
    """Download a face detector and an ArcFace-format recognizer, pinned by sha256 (needs
    internet or a mirror); the default embedder (`auto`) then runs arcface with them."""
    if pack not in PACKS:
        _fail(f"unknown pack {pack!r}; known: {', '.join(PACKS)}", 2)
    dest = dest or models_dir()
    models = tuple(relocate(m, mirror) for m in PACKS[pack])
    try:
        with httpx.Client(timeout=300) as client:
            done = fetch_all(models, dest, client)
    except (httpx.HTTPError, ModelFetchFailed) as exc:
        _fail(f"{exc} (nothing written to {dest})")
    except OSError as exc:
        _fail(f"cannot write the models to {dest}: {exc}")
    for model, digest in done:
        source = f"from {model.url.rsplit('/', 1)[1]}, " if model.member else ""
        typer.echo(
            f"{dest / model.name}  sha256 {digest} ({source}verified)  licence: {model.licence}"
        )
    name, note = resolve_embedder(AUTO, {"models_dir": str(dest)})
    recognizer = recognizer_model({"models_dir": str(dest)})
    typer.echo(f"the default embedder (auto) with models_dir {dest} runs {name} with {recognizer}")
    if note:
        typer.echo(f"note: {note}")


if __name__ == "__main__":
    app()
