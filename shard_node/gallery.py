"""Ingest a `<person>/<photo>` folder into a store: one FaceId per person, idempotent."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shard_node.faces.base import EmbedderInfo, Face, enrollable_face
from shard_node.faces.pool import FacePool
from shard_node.index import StoreIndex
from storeface.embedders import same_model
from storeface.errors import FaceNotFound, StorefaceError
from storeface.facedb import AddResult, FaceDB
from storeface.matching import size_rule_for
from storeface.stores import StoreConfig

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass
class IngestReport:
    """What an ingest did, photo by photo where it did not add one."""

    people: int = 0
    added: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # photos with several faces, enrolled by the one that dominates (or by the largest)
    dominant: list[str] = field(default_factory=list)
    faces: dict[str, int] = field(default_factory=dict)  # person → FaceId
    # people the store (or, with other stores' indexes, the chain) already knew under a
    # FaceId (a visitor, an earlier enrollment) → (FaceId, distance, the store it was in)
    known: dict[str, tuple[int, float, str]] = field(default_factory=dict)

    def details(self) -> str:
        """The summary, then a line per person already known, photo skipped or photo enrolled
        by its dominant face."""
        lines = [self.summary()]
        for person, (fid, dist, store) in sorted(self.known.items()):
            lines.append(
                f"  {person}: already known as FaceId {fid} in {store} (distance {dist:.3f})"
            )
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped]
        lines += [f"  several faces in {path}: enrolled the dominant one" for path in self.dominant]
        return "\n".join(lines)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _, why in self.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"
        return (
            f"{self.people} people, {self.added} photos added, {self.already} already "
            f"ingested, {len(self.skipped)} skipped ({why}), {len(self.known)} people "
            f"already known under a FaceId, {len(self.dominant)} photos with several faces "
            "enrolled by the dominant one"
        )


def photos_by_person(folder: Path) -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = {}
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if photos:
            people[person.name] = photos
    return people


async def ingest_folder(
    db: FaceDB,
    pool: FacePool,
    store_id: str,
    info: EmbedderInfo,
    folder: Path,
    *,
    largest: bool = False,
    min_size: int = 0,
    on_added: Callable[[int, int, int, np.ndarray], None] | None = None,
    progress: Callable[[int], None] | None = None,
    index: StoreIndex | None = None,
    threshold: float | None = None,
    others: dict[str, StoreIndex] | None = None,
) -> IngestReport:
    """Embed every photo in parallel (the pool's workers) and store it under its person.

    With the store's `index`, a person whose first photo matches a FaceId the store already
    has (under `threshold`) joins that FaceId instead of getting a second one; with `others`
    (other stores' indexes, chain_indexes), a FaceId of another store too, and their photos
    are filed here under it."""
    searched = ([(store_id, index)] if index is not None else []) + list((others or {}).items())
    people = photos_by_person(folder)
    report = IngestReport(people=len(people))
    limit = asyncio.Semaphore(pool.workers * 2)
    person_locks = {name: asyncio.Lock() for name in people}

    async def one(person: str, path: Path) -> None:
        async with limit:
            try:
                await _ingest_photo(person, path)
            finally:
                if progress:
                    progress(1)

    async def _ingest_photo(person: str, path: Path) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        sha = hashlib.sha256(data).hexdigest()
        if await db.photo_face(store_id, sha) is not None:
            report.already += 1
            return
        face = await _enrollable(pool, data, path, min_size, largest, report)
        if face is None:
            return
        async with person_locks[person]:  # the person's first photo makes the FaceId
            face_id = await db.gallery_face(store_id, person)
            known = None
            if face_id is None and person not in report.known:
                known = await _known_face(db, searched, face.embedding, threshold or info.threshold)
                face_id = known[0] if known is not None else None
            created = face_id is None
            if face_id is None:
                face_id = await db.new_face_id()
            try:
                result = await _file_photo(
                    db, store_id, info, person, face_id, face.embedding, sha, created, known
                )
            except FaceNotFound as exc:  # erased meanwhile: listed; a later photo starts anew
                await db.forget_gallery_face(store_id, person, face_id)
                report.skipped.append((str(path), exc.code))
                return
            if known is not None:
                report.known[person] = known
        if result.duplicate:
            report.already += 1
            return
        report.added += 1
        report.faces[person] = face_id
        if on_added:
            on_added(result.gen, result.vec_id, face_id, face.embedding)

    await asyncio.gather(*(one(person, p) for person, ps in people.items() for p in ps))
    return report


async def _file_photo(
    db: FaceDB,
    store_id: str,
    info: EmbedderInfo,
    person: str,
    face_id: int,
    embedding: np.ndarray,
    sha: str,
    created: bool,
    known: tuple[int, float, str] | None,
) -> AddResult:
    """Add a photo's vector under `face_id` (made here where `created`), then file the
    person's FaceId in the gallery where this photo made or found it, and name a found one.
    Only once the vector is in: an erase that lands first makes add_vector refuse
    (FaceNotFound), and neither step recreates an erased FaceId."""
    result = await db.add_vector(
        store_id,
        face_id,
        embedding,
        embedder=info.name,
        kind="gallery",
        label=person,
        photo_sha=sha,
        create=created,
    )
    if (known is not None or created) and not await db.set_gallery_face(store_id, person, face_id):
        raise FaceNotFound(face_id=face_id)
    if known is not None:
        await db.label_if_unlabelled(face_id, person)
    return result


async def _enrollable(
    pool: FacePool, data: bytes, path: Path, min_size: int, largest: bool, report: IngestReport
) -> Face | None:
    """The face a photo is enrolled by, else None with the reason listed in the report."""
    try:
        analysis = await pool.analyze(data, wait=True)
        face = enrollable_face(analysis.faces, min_size, largest)
    except StorefaceError as exc:  # broken, no face, several, too small: listed, not added
        report.skipped.append((str(path), exc.code))
        return None
    if len(analysis.faces) > 1:
        report.dominant.append(str(path))
    return face


async def _known_face(
    db: FaceDB, indexes: list[tuple[str, StoreIndex]], embedding: np.ndarray, threshold: float
) -> tuple[int, float, str] | None:
    """The live FaceId nearest to an embedding in the stores' indexes (the first, the
    ingest's own store, wins a tie), if under the threshold."""
    hits = [(row[0], sid) for sid, idx in indexes if (row := idx.search(embedding[None, :], 1)[0])]
    for best, sid in sorted(hits, key=lambda h: h[0].distance):
        if best.distance > threshold:
            return None
        if await db.get_face(best.face_id):
            return best.face_id, round(best.distance, 6), sid
    return None


async def load_index(db: FaceDB, info: EmbedderInfo, store_id: str) -> StoreIndex:
    """A store's faces as they are in Redis now, in an exact index."""
    index = StoreIndex(info.dim, info.metric, info.name)
    async for vids, fids, embs in db.scan_vectors(store_id):
        index.add(vids, fids, embs)
    return index


async def chain_indexes(
    db: FaceDB, info: EmbedderInfo, stores: list[StoreConfig]
) -> tuple[dict[str, StoreIndex], list[str]]:
    """The indexes of the stores whose recorded embedder is `info`'s, read from Redis (the
    whole of each store: memory and time grow with the chain), and the stores left out."""
    indexes: dict[str, StoreIndex] = {}
    left_out = []
    for store in stores:
        recorded = await db.redis.hget(f"store:{store.id}:meta", "embedder")
        held = recorded.decode() if isinstance(recorded, bytes) else str(recorded or "")
        if held and same_model(held, info.identity, store.embedder_options):
            indexes[store.id] = await load_index(db, info, store.id)
        elif held:
            left_out.append(store.id)  # another model: its distances mean nothing here
    return indexes, left_out


def ingest_threshold(info: EmbedderInfo, store: StoreConfig, searched: list[StoreIndex]) -> float:
    """The match threshold of an ingest's search: the store's size rule over every face it
    searches (its own and, with the chain's, theirs), as the gateway's fan-out does."""
    rule = size_rule_for(info.name, store.threshold or info.threshold, store.threshold_per_decade)
    return rule.threshold(sum(index.face_count for index in searched))
