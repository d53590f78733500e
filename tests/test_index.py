"""The store index on its own: real faiss, face-shaped vectors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from shard_node.faces.base import EmbedderInfo
from shard_node.group_index import GroupIndex
from shard_node.index import IndexPolicy, StoreIndex, _block_lists, _list_ids
from shard_node.replica import Replica
from storeface.errors import EmbeddingInvalid
from tools.dataset import EmbeddedSet


def face_like(
    n_people: int, per: int, dim: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Identities with a few close views each, like real embeddings (unit norm)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    views = np.repeat(centres, per, axis=0) + rng.normal(0, 0.03, (n_people * per, dim))
    return views.astype(np.float32), np.repeat(np.arange(1, n_people + 1), per)


def assert_ivf_consistent(idx: StoreIndex) -> None:
    """The IVF holds exactly the live slots, zeros past the end of every list (where faiss's
    next add ORs new codes in), and in each list's last block (where adds land) the codes of
    the raw vectors of its slots."""
    ivf: Any = idx._ivf
    st = idx._store
    lists = _block_lists(ivf)
    packer = lists.packer
    seen, got, slots = [], [], []
    for lst in range(lists.nlist):
        ids = _list_ids(lists, lst)
        seen.append(ids)
        if not len(ids):
            continue
        blocks = -(-len(ids) // lists.n_per_block)
        raw = faiss.rev_swig_ptr(lists.get_codes(lst), blocks * lists.block_size)
        codes = np.frombuffer(bytes(raw), np.uint8).reshape(blocks, lists.block_size)
        for off in range((blocks - 1) * lists.n_per_block, blocks * lists.n_per_block):
            code = packer.unpack_1(codes, off)
            if off < len(ids):
                got.append(code)
                slots.append(ids[off])
            else:
                assert not code.any(), f"list {lst}: stale code past its end at {off}"
    want = ivf.sa_encode(np.ascontiguousarray(st.raw[slots]))[:, ivf.coarse_code_size() :]
    wrong = np.flatnonzero((np.array(got) != want).any(axis=1))
    assert not len(wrong), f"slots {np.array(slots)[wrong]} hold another vector's code"
    assert ivf.ntotal == st.n
    assert (np.sort(np.concatenate(seen)) == np.arange(st.n)).all()


def test_several_vectors_per_face_search_returns_distinct_faces() -> None:
    x, faces = face_like(50, 4)
    idx = StoreIndex(128, "l2", "test")
    idx.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    assert (len(idx), idx.face_count) == (200, 50)
    rows = idx.search(x[:3], 5)
    for row, want in zip(rows, faces[:3], strict=True):
        assert row[0].face_id == want
        assert len({m.face_id for m in row}) == 5
        assert [m.distance for m in row] == sorted(m.distance for m in row)


def test_remove_face_removes_all_its_vectors_and_replay_is_idempotent() -> None:
    x, faces = face_like(10, 3)
    idx = StoreIndex(128, "l2", "test")
    vids = list(range(1, 31))
    idx.add(vids, faces.tolist(), x)
    assert idx.add(vids, faces.tolist(), x) == 0  # a replayed feed adds nothing
    assert idx.remove_face(1) == 3
    assert len(idx) == 27
    assert all(m.face_id != 1 for m in idx.search(x[:1], 10)[0])
    assert idx.remove_face(1) == 0


def test_cosine_metric_reports_one_minus_cosine() -> None:
    idx = StoreIndex(4, "cosine", "test")
    idx.add([1, 2], [7, 8], np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    m = idx.search(np.array([[2, 0, 0, 0]], np.float32), 2)[0]
    assert m[0].face_id == 7 and m[0].distance == pytest.approx(0.0, abs=1e-6)
    assert m[1].distance == pytest.approx(1.0, abs=1e-6)


def test_bad_vectors_are_refused() -> None:
    idx = StoreIndex(128, "l2", "test")
    with pytest.raises(EmbeddingInvalid):
        idx.add([1], [1], np.zeros((1, 64), np.float32))
    with pytest.raises(EmbeddingInvalid):
        idx.search(np.full((1, 128), np.nan, np.float32), 1)


def test_switches_to_ivf_past_threshold_with_recall_target() -> None:
    x, faces = face_like(3000, 2)
    policy = IndexPolicy(ivf_threshold=4000, calibration_queries=300)
    idx = StoreIndex(128, "l2", "test", policy)
    idx.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    assert idx.needs_rebuild()
    idx.rebuild()
    assert idx.kind == "ivfpq" and idx.nprobe >= 1
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 300, replace=False)]
    q = q + rng.normal(0, 0.02, q.shape).astype(np.float32)
    exact = StoreIndex(128, "l2", "test")
    exact.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    got = [r[0].face_id for r in idx.search(q, 1)]
    want = [r[0].face_id for r in exact.search(q, 1)]
    assert np.mean(np.array(got) == np.array(want)) >= 0.99


def test_writes_during_rebuild_are_kept() -> None:
    x, faces = face_like(2500, 2)
    idx = StoreIndex(128, "l2", "test", IndexPolicy(ivf_threshold=4000))
    idx.add(list(range(1, 4001)), faces[:4000].tolist(), x[:4000])
    t = threading.Thread(target=idx.rebuild)
    t.start()
    idx.add(list(range(4001, 5001)), faces[4000:].tolist(), x[4000:])
    idx.remove_face(1)
    t.join()
    assert idx.kind == "ivfpq"
    assert len(idx) == 4998
    assert idx.search(x[4500:4501], 1)[0][0].face_id == faces[4500]
    assert all(m.face_id != 1 for m in idx.search(x[:1], 3)[0])


def test_snapshot_round_trip_and_embedder_check(tmp_path: Path) -> None:
    x, faces = face_like(20, 2)
    idx = StoreIndex(128, "l2", "dlib")
    idx.add(list(range(1, 41)), faces.tolist(), x)
    idx.save(tmp_path / "s", {"position": "5-0", "gen": 40})
    loaded = StoreIndex.load(tmp_path / "s", "dlib", 128, "l2")
    assert loaded is not None
    copy, meta = loaded
    assert meta["gen"] == 40 and len(copy) == 40
    assert [m.face_id for m in copy.search(x[:5], 1)[0]] == [
        m.face_id for m in idx.search(x[:5], 1)[0]
    ]
    assert StoreIndex.load(tmp_path / "s", "arcface", 128, "cosine") is None


def realistic(
    embeddings: np.ndarray, people: int, per: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors shaped like real embeddings: identities drawn from their mean and covariance,
    views of one identity about 0.55 as far apart as two identities (as on lfw_dev)."""
    rng = np.random.default_rng(seed)
    mu, cov = embeddings.mean(0), np.cov(embeddings.T)
    root = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mu)))
    centres = mu + rng.normal(size=(people, len(mu))) @ root.T

    def views(k: int) -> np.ndarray:
        noise = rng.normal(size=(people * k, len(mu))) @ root.T * 0.4
        return (np.repeat(centres, k, axis=0) + noise).astype(np.float32)

    return views(per), np.repeat(np.arange(1, people + 1), per), views(1)


@pytest.mark.slow  # embeds 1,239 strangers' photos once (then cached)
def test_ivf_keeps_recall_on_realistic_vectors(distractor_set: EmbeddedSet) -> None:
    """Calibrating on noisy copies of stored vectors once claimed 0.99 at a real 0.65."""
    x, faces, fresh = realistic(distractor_set.embeddings[distractor_set.ok], 6000, 2)
    idx = StoreIndex(128, "l2", "test", IndexPolicy(ivf_threshold=10_000))
    idx.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    idx.rebuild()
    exact = StoreIndex(128, "l2", "test")
    exact.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    q = fresh[:400]  # a new photo of 400 enrolled people
    want = [r[0].face_id for r in exact.search(q, 1)]
    got = [r[0].face_id for r in idx.search(q, 1)]
    agreement = float(np.mean(np.array(got) == np.array(want)))
    assert idx.kind == "ivfpq" and idx.nprobe > 0, "the test is about IVF: it must be chosen"
    assert agreement >= 0.97, (idx.kind, idx.nprobe, agreement)


def test_group_index_tags_stores_and_says_when_filtering_left_too_few() -> None:
    """The group-wide index answers per store; when the stores asked for are crowded out of
    the nearest vectors by another store's, it says so (None) instead of answering short."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 128)).astype(np.float32)
    near = q + 0.01 * rng.standard_normal((100, 128)).astype(np.float32)
    far = q + 1.0 * rng.standard_normal((1, 128)).astype(np.float32)
    group = GroupIndex(128, "l2", "test", IndexPolicy())
    home = StoreIndex(128, "l2", "test")
    home.add(list(range(100)), [1000 + i for i in range(100)], near)
    group.replace_store("home", home)
    group.add("other", [500], [7], far)
    assert len(group) == 101
    both = group.search(q, 2, {"home", "other"})[0]
    assert both is not None and [sid for _, sid in both] == ["home", "home"]
    assert group.search(q, 1, {"other"}) == [None]  # 100 nearer vectors of another store
    group.remove("home", set(range(100)))
    only = group.search(q, 1, {"other"})[0]
    assert only is not None and [(m.face_id, sid) for m, sid in only] == [(7, "other")]
    assert group.index.face_count == len(group) == 1  # its "faces" are its vectors
    group.drop_store("other")
    assert len(group) == 0 and group.search(q, 1, {"other"}) == [[]]


def test_a_local_add_the_feed_already_applied_is_not_repeated() -> None:
    """An enrollment's own add lands after the feed applied it and a later erase: adding it
    again would bring an erased face back into memory."""
    info = EmbedderInfo("test", 128, "l2", 0.5, "")
    replica = Replica("s", info, db=None)  # type: ignore[arg-type]  # no Redis call here
    vec = np.ones(128, np.float32)
    replica.gen = 7  # the feed is at sequence 7: the add (6) and its erase (7) are applied
    replica.apply_local_add(6, 100, 1, vec)
    assert len(replica.index) == 0
    replica.apply_local_add(8, 101, 2, vec)  # ahead of the feed: searchable at once
    assert replica.index.has_vector(101)


def ivf_store(
    n_people: int = 2500, per: int = 2, dim: int = 128, threshold: int = 2000
) -> tuple[StoreIndex, np.ndarray, np.ndarray]:
    """A store past a small switch point, rebuilt: the compressed kind, on small data."""
    x, faces = face_like(n_people, per, dim)
    policy = IndexPolicy(ivf_threshold=threshold * dim // 128, calibration_queries=500)
    idx = StoreIndex(dim, "l2", "test", policy)
    idx.add(list(range(1, len(x) + 1)), faces.tolist(), x)
    idx.rebuild()
    assert idx.kind == "ivfpq"
    return idx, x, faces


def test_compressed_kind_is_chosen_above_its_switch_point_only() -> None:
    """Flat below the switch point, IVF-PQ above it (scaled by 128/d), Flat again below half."""
    x, faces = face_like(1500, 2)
    policy = IndexPolicy(ivf_threshold=2000)
    idx = StoreIndex(128, "l2", "test", policy)
    idx.add(list(range(1, 1900)), faces[:1899].tolist(), x[:1899])
    assert not idx.needs_rebuild() and idx.kind == "flat"
    idx.add(list(range(1900, 3001)), faces[1899:].tolist(), x[1899:])
    assert idx.needs_rebuild()
    idx.rebuild()
    assert (idx.kind, idx.nlist) == ("ivfpq", 54) and idx.nprobe >= 1
    assert idx.search(x[10:11], 1)[0][0].face_id == faces[10]
    idx.remove_faces(set(faces[:2200].tolist()))
    assert len(idx) == 800 and idx.needs_rebuild()
    idx.rebuild()
    assert idx.kind == "flat" and idx.nprobe == 0
    assert idx.search(x[2900:2901], 1)[0][0].face_id == faces[2900]
    assert policy.flat_limit(512) == 500  # Flat's cost grows with n·d


def test_erase_takes_codes_and_raw_vectors_out_of_memory() -> None:
    idx, x, faces = ivf_store()
    gone = set(faces[::7].tolist())
    erased = x[np.isin(faces, list(gone))]
    assert idx.remove_faces(gone) == len(erased)
    assert idx.face_count == 2500 - len(gone)
    assert_ivf_consistent(idx)
    for row in idx.search(erased, 50):
        assert not {m.face_id for m in row} & gone
    assert not any(idx.vectors_of(f) for f in gone)
    assert not any(idx.has_vector(int(v) + 1) for v in np.flatnonzero(np.isin(faces, list(gone))))
    stored = idx._store.raw  # every row, the spare ones past the end included
    nearest, _ = faiss.knn(erased, stored, 1)
    assert nearest.min() > 1e-6


def test_random_erases_and_adds_keep_the_ivf_exact() -> None:
    """Adds after erases land in partly filled 4-bit blocks: faiss corrupts them unless the
    freed tail was zeroed (the check compares every code with its raw vector's)."""
    idx, _, faces = ivf_store(2000, 3)
    more, more_faces = face_like(300, 2, seed=4)
    rng = np.random.default_rng(5)
    for r in range(10):
        idx.remove_faces(set(rng.choice(faces, size=12, replace=False).tolist()))
        rows = slice(60 * r, 60 * r + 60)
        ids = list(range(10_000 + 60 * r, 10_060 + 60 * r))
        idx.add(ids, (more_faces[rows] + 5000).tolist(), more[rows])
        assert_ivf_consistent(idx)
    found = idx.search(more[:600:25], 1)
    assert [r[0].face_id for r in found] == (more_faces[:600:25] + 5000).tolist()
    assert all(r[0].distance < 1e-3 for r in found)


def test_snapshot_of_the_compressed_index_survives_a_restart(tmp_path: Path) -> None:
    idx, x, faces = ivf_store()
    idx.remove_face(int(faces[0]))
    idx.save(tmp_path / "s", {"position": "9-0", "gen": 9})
    before = idx.search(x[:40], 3)
    loaded = StoreIndex.load(tmp_path / "s", "test", 128, "l2", idx.policy)
    assert loaded is not None
    copy, meta = loaded  # as a restarted process sees it
    assert (copy.kind, copy.nprobe, copy.nlist, len(copy)) == (
        "ivfpq",
        idx.nprobe,
        idx.nlist,
        len(idx),
    )
    assert meta["gen"] == 9 and copy.search(x[:40], 3) == before
    assert_ivf_consistent(copy)
    copy.remove_face(int(faces[2]))  # writes go on after the load
    copy.add([99_999], [77_777], x[2:3])
    assert_ivf_consistent(copy)
    assert copy.search(x[2:3], 1)[0][0].face_id == 77_777
    assert copy.face_of(99_999) == 77_777 and not copy.has_vector(1)
    copy.remove_faces(set(faces.tolist()))  # back to a handful: a Flat snapshot
    copy.rebuild()
    copy.save(tmp_path / "s", {"position": "10-0", "gen": 10})
    assert not (tmp_path / "s" / "ivf.faiss").exists()
    again = StoreIndex.load(tmp_path / "s", "test", 128, "l2")
    assert again is not None and again[0].kind == "flat" and len(again[0]) == 1


def test_a_snapshot_of_the_old_format_is_rebuilt(tmp_path: Path) -> None:
    x, faces = face_like(20, 2)
    idx = StoreIndex(128, "l2", "dlib")
    idx.add(list(range(1, 41)), faces.tolist(), x)
    idx.save(tmp_path / "s", {"position": "5-0", "gen": 40})
    meta = tmp_path / "s" / "meta.json"
    meta.write_text(meta.read_text().replace('"format": 2', '"format": 1'))
    assert StoreIndex.load(tmp_path / "s", "dlib", 128, "l2") is None


def test_rebuild_replays_the_writes_made_while_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes land after the rebuild read the vectors (erases move rows it already read)."""
    x, faces = face_like(2500, 2)
    idx = StoreIndex(128, "l2", "test", IndexPolicy(ivf_threshold=2000))
    idx.add(list(range(1, 4001)), faces[:4000].tolist(), x[:4000])
    read, written = threading.Event(), threading.Event()
    calibrate = StoreIndex._calibrate_nprobe

    def paused(self: StoreIndex, ivf: Any, probes: Any) -> int | None:
        read.set()
        assert written.wait(30)
        return calibrate(self, ivf, probes)

    monkeypatch.setattr(StoreIndex, "_calibrate_nprobe", paused)
    t = threading.Thread(target=idx.rebuild)
    t.start()
    assert read.wait(30)
    assert idx.kind == "flat" and idx.rebuilding  # the old index answers meanwhile
    idx.add(list(range(4001, 5001)), faces[4000:].tolist(), x[4000:])
    idx.remove_faces({int(faces[0]), int(faces[1500])})
    written.set()
    t.join()
    assert idx.kind == "ivfpq" and len(idx) == 4996
    assert_ivf_consistent(idx)
    assert idx.search(x[4500:4501], 1)[0][0].face_id == faces[4500]
    assert all(m.face_id not in (faces[0], faces[1500]) for m in idx.search(x[:1], 5)[0])


def test_nprobe_is_calibrated_on_the_probes_that_match() -> None:
    """Strangers (no one within the threshold) get "no match" whatever IVF finds: counting
    them demands a scan IVF cannot afford here, counting the matches does not."""
    pairs, pair_faces = face_like(2000, 2)
    strangers, _ = face_like(4000, 1, seed=1)
    x = np.vstack([pairs, strangers])
    faces = np.concatenate([pair_faces, np.arange(10_000, 14_000)])
    rng = np.random.default_rng(2)
    q = pairs[::2][:500] + rng.normal(0, 0.03, (500, 128)).astype(np.float32)
    kinds = []
    for threshold in (None, 0.7):
        policy = IndexPolicy(
            ivf_threshold=4000, match_threshold=threshold, calibration_queries=1000
        )
        idx = StoreIndex(128, "l2", "test", policy)
        idx.add(list(range(1, len(x) + 1)), faces.tolist(), x)
        idx.rebuild()
        kinds.append(idx.kind)
        assert [r[0].face_id for r in idx.search(q, 1)] == pair_faces[::2][:500].tolist()
    assert kinds == ["flat", "ivfpq"]


def test_match_threshold_is_the_embedders_unless_the_policy_says() -> None:
    assert StoreIndex(128, "l2", "dlib").match_threshold() == pytest.approx(0.43)
    assert StoreIndex(128, "l2", "test").match_threshold() is None
    policy = IndexPolicy(match_threshold=0.5)
    assert StoreIndex(128, "l2", "dlib", policy).match_threshold() == 0.5


def test_memory_stays_under_1_3x_the_raw_vectors() -> None:
    for dim in (128, 512):
        idx, _, _ = ivf_store(1500, 2, dim)
        used = idx.memory()
        raw = len(idx) * dim * 4
        assert sum(used.values()) <= 1.3 * raw, (dim, used, raw)
