"""The hnswlib wrapper: growth, k clamping, deletes, atomic saves, readers that follow."""

import json
import os

import numpy as np
import pytest

from gallery.index import (
    INDEX_FILE,
    META_FILE,
    IndexMeta,
    IndexReader,
    IndexUnusable,
    VectorIndex,
    write_lock,
)

DIM = 16


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_grows_past_capacity_and_finds_exact_vectors(rng):
    index = VectorIndex.create("m", DIM, capacity=8)
    vectors = unit(rng, 100)
    for start in range(0, 100, 10):
        index.add(list(range(start, start + 10)), vectors[start : start + 10])
    assert len(index) == 100
    assert index.meta.capacity >= 100
    label, score = index.query(vectors[42], 1)[0]
    assert label == 42 and score == pytest.approx(1.0, abs=1e-4)


def test_k_is_clamped_to_what_the_index_holds(rng):
    index = VectorIndex.create("m", DIM)
    index.add([1, 2, 3], unit(rng, 3))
    assert len(index.query(unit(rng, 1)[0], 50)) == 3
    assert VectorIndex.create("m", DIM).query(unit(rng, 1)[0], 5) == []


def test_deleted_items_never_come_back_until_re_added(rng):
    index = VectorIndex.create("m", DIM)
    vectors = unit(rng, 20)
    index.add(list(range(20)), vectors)
    assert index.remove([5, 5, 999]) == 1  # repeated and unknown labels are ignored
    assert len(index) == 19
    assert 5 not in [label for label, _ in index.query(vectors[5], 19)]
    assert index.vector(5) is None
    assert len(index.query(vectors[5], 50)) == 19
    index.add([5], vectors[5:6])
    assert index.query(vectors[5], 1)[0][0] == 5
    assert len(index) == 20


def test_filter_restricts_results(rng):
    index = VectorIndex.create("m", DIM)
    vectors = unit(rng, 50)
    index.add(list(range(50)), vectors)
    hits = index.query(vectors[0], 10, allowed={3, 7, 9})
    assert sorted(label for label, _ in hits) == [3, 7, 9]


def test_items_of_several_views_answer_by_their_best_view_and_go_whole(tmp_path, rng):
    """A photo's details: four vectors per item, one item in the answers."""
    index = VectorIndex.create("details", DIM, views=4, capacity=4)
    vectors = unit(rng, 30 * 4).reshape(30, 4 * DIM)
    index.add(list(range(100, 130)), vectors)
    assert len(index) == 30 and index.labels() == set(range(100, 130))
    for item in (100, 117):
        for view in range(4):
            label, score = index.query(vectors[item - 100, view * DIM : (view + 1) * DIM], 5)[0]
            assert label == item and score == pytest.approx(1.0, abs=1e-4)
    answer = index.query(vectors[0, :DIM], 10)
    assert len(answer) == 10 and len({label for label, _ in answer}) == 10  # items, not views
    assert index.remove([117]) == 1 and len(index) == 29 and 117 not in index.labels()
    for view in range(4):  # no view of a removed item comes back
        assert 117 not in [la for la, _ in index.query(vectors[17, view * DIM : (view + 1) * DIM], 29)]
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded is not None and loaded.meta.views == 4 and len(loaded) == 29
    assert loaded.query(vectors[5, 2 * DIM : 3 * DIM], 1)[0][0] == 105
    loaded.add([117], vectors[17:18])
    assert loaded.query(vectors[17, 3 * DIM :], 1)[0][0] == 117 and len(loaded) == 30
    with pytest.raises(ValueError):
        loaded.vector(105)  # a whole vector of an item of views is not a thing


def test_save_is_atomic_and_reload_keeps_deletes_and_ef(tmp_path, rng):
    index = VectorIndex.create("model-a", DIM, ef=77)
    vectors = unit(rng, 30)
    index.add(list(range(30)), vectors)
    index.remove([3])
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE, META_FILE]  # no temp files left
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["model"] == "model-a" and meta["count"] == 29 and meta["version"] == 1
    loaded = VectorIndex.load(tmp_path, ef=77)
    assert loaded.ef == 77 and len(loaded) == 29
    assert 3 not in [label for label, _ in loaded.query(vectors[3], 29)]


def test_reader_picks_up_new_versions(tmp_path, rng):
    reader = IndexReader(tmp_path, check_interval=0)
    assert reader.get() is None
    index = VectorIndex.create("m", DIM)
    index.add([1], unit(rng, 1))
    index.save(tmp_path)
    first = reader.get()
    assert len(first) == 1
    assert reader.get() is first  # unchanged files: no reload
    index.add([2, 3], unit(rng, 2))
    index.save(tmp_path)
    assert len(reader.get()) == 3


def test_write_lock_is_exclusive_across_processes(tmp_path):
    """A forked child cannot take the lock while the parent holds it."""
    with write_lock(tmp_path):
        pid = os.fork()
        if pid == 0:  # child: try without blocking
            import fcntl

            with open(tmp_path / "write.lock", "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os._exit(1)
                except BlockingIOError:
                    os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_meta_read_tolerates_missing_or_broken(tmp_path):
    assert IndexMeta.read(tmp_path) is None
    (tmp_path / META_FILE).write_text("{broken")
    assert IndexMeta.read(tmp_path) is None


def test_hamming_query_ranks_by_sign_bits_then_cosine(rng):
    index = VectorIndex.create("hash", 16)
    base = np.where(rng.standard_normal((1, 16)) > 0, 1.0, -1.0)
    near = base.copy()
    near[0, :2] *= -1  # 2 bits away
    far = -base  # 16 bits away
    same_bits = base * np.linspace(0.2, 1.0, 16)  # 0 bits away, a different direction
    vectors = np.concatenate([near, far, same_bits]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add([1, 2, 3], vectors)
    query = (base / np.linalg.norm(base)).astype(np.float32)[0]
    hits = index.hamming_query(query, 2, candidates=2)
    assert [label for label, _ in hits] == [3, 1]  # the 2 nearest codes, re-ranked by cosine
    assert [label for label, _ in index.hamming_query(query, 3)] == [3, 1, 2]
    assert hits[0][1] == pytest.approx(float(vectors[2] @ query))
    assert [label for label, _ in index.hamming_query(query, 3, allowed={2}, candidates=5)] == [2]
    index.remove([3])
    assert 3 not in [label for label, _ in index.hamming_query(query, 3)]


_FULL_DISK = """
import resource, signal, sys
import numpy as np
from pathlib import Path
from gallery.index import IndexWriteFailed, VectorIndex

directory, limit = Path(sys.argv[1]), int(sys.argv[2])
index = VectorIndex.load(directory)
index.add(list(range(1000, 1400)), np.random.default_rng(1).normal(size=(400, 16)).astype(np.float32))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    index.save(directory)
except IndexWriteFailed as exc:
    print("refused:", exc)
"""


def test_a_write_that_fails_silently_never_replaces_the_last_good_index(tmp_path, rng):
    """hnswlib's save_index reports no failed write: with files limited to fewer bytes than
    the index needs (a full disk), the truncated file is caught before it is installed."""
    import subprocess
    import sys

    index = VectorIndex.create("m", DIM)
    index.add(list(range(300)), unit(rng, 300))
    index.save(tmp_path)
    good = (tmp_path / INDEX_FILE).read_bytes()
    limit = len(good) + 2000  # room for the old size, not for 400 more items
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert "refused:" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / INDEX_FILE).read_bytes() == good
    again = VectorIndex.load(tmp_path)
    assert again is not None and len(again) == 300 and again.meta.version == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_reader_keeps_its_last_good_index_when_the_files_go_bad(tmp_path, rng):
    vectors = unit(rng, 50)
    index = VectorIndex.create("m", DIM)
    index.add(list(range(50)), vectors)
    index.save(tmp_path)
    asked = []
    reader = IndexReader(tmp_path, on_unusable=asked.append)
    assert len(reader.get()) == 50 and not asked
    meta = json.loads((tmp_path / META_FILE).read_text())
    with open(tmp_path / INDEX_FILE, "r+b") as fh:  # truncated, and a newer meta.json
        fh.truncate(meta["index_bytes"] // 2)
    meta["version"] += 1
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    served = reader.get()
    assert served is not None and served.query(vectors[7], 1)[0][0] == 7
    assert asked == [tmp_path] and "bytes" in reader.unusable
    fresh = IndexReader(tmp_path, on_unusable=asked.append)
    assert fresh.get() is None and len(asked) == 2  # nothing to serve yet: a rebuild is asked
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(IndexUnusable):
        VectorIndex.load(tmp_path)


def test_hash_changes_kept_beside_the_built_tables_answer_like_a_fresh_build(rng):
    """After adds, replacements and removes, the hash view (built tables + changes) gives what
    a HashIndex built from scratch gives."""
    from gallery.retrieval.hashes import HashIndex

    index = VectorIndex.create("m", DIM)
    codes = rng.integers(0, 256, size=(300, 32), dtype=np.uint8)
    index.add(list(range(300)), unit(rng, 300), [bytes(c) for c in codes])
    index.hash_index()  # the tables are built now
    near = codes[7].copy()
    near[:2] ^= 0xFF  # 16 bits away from item 7
    index.add([300, 5], unit(rng, 2), [bytes(near), bytes(codes[9])])  # a new item; 5 now copies 9
    index.remove([7, 11])
    view = index.hash_index()
    assert view.added.labels.tolist() == [5, 300]  # the change was not merged into the tables
    truth = {label: bytes(c) for label, c in enumerate(codes) if label not in (7, 11)}
    truth[5], truth[300] = bytes(codes[9]), bytes(near)
    labels = np.array(sorted(truth))
    fresh = HashIndex(labels, np.frombuffer(b"".join(truth[int(x)] for x in labels), dtype=np.uint8))
    assert len(view) == len(fresh) == 299
    for query in (codes[7], codes[9], codes[100]):
        assert [(m.label, m.distance) for m in view.nearest(query, 5)] == [
            (m.label, m.distance) for m in fresh.nearest(query, 5)
        ]
        assert [(m.label, m.distance) for m in view.within(query[None], 31)] == [
            (m.label, m.distance) for m in fresh.within(query[None], 31)
        ]
    assert view.distance_to([5, 7, 300], codes[9][None]) == fresh.distance_to([5, 7, 300], codes[9][None])
    assert sorted(view.labels.tolist()) == labels.tolist()


def test_an_item_hash_distance_is_counted_without_building_the_tables(rng):
    """The index writer notes each upload's copy by one item's hash distance: counted from
    the held hashes (building the multi-index tables first cost seconds at a million)."""
    from gallery.retrieval.hashes import HashIndex

    index = VectorIndex.create("m", DIM)
    codes = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    index.add(list(range(50)), unit(rng, 50), [bytes(c) for c in codes[:40]] + [None] * 10)
    queries = codes[[3, 9]]
    wanted = HashIndex(np.arange(40), codes[:40]).distance_to([3, 9, 12, 45], queries)
    assert index.hash_distances([3, 9, 12, 45], queries) == wanted and set(wanted) == {3, 9, 12}
    assert wanted[3] == wanted[9] == 0
    assert index._hashes.current_view(eager=False) is None  # no tables were built


def test_a_search_leaves_the_hash_tables_rebuild_to_the_follower(rng):
    """Rebuilding the hash tables costs 1-2 s at a million items: a search keeps up to twice
    the due changes beside them; the reader's follower (`eager`) merges as soon as due."""
    index = VectorIndex.create("m", DIM)
    codes = rng.integers(0, 256, size=(2500, 32), dtype=np.uint8)
    index.add(list(range(400)), unit(rng, 400), [bytes(c) for c in codes[:400]])
    index.hash_index()
    index.add(list(range(400, 2500)), unit(rng, 2100), [bytes(c) for c in codes[400:]])
    assert len(index.hash_index().added) == 2100  # due (over 2,000), not twice due
    merged = index.hash_index(eager=True)
    assert len(merged.added) == 0 and len(merged.base) == 2500
    assert merged.nearest(codes[2400], 1)[0].label == 2400


def test_searches_in_threads_while_changes_are_applied(rng):
    """hnswlib must never add while it searches: the index's lock lets queries run together
    and changes alone, with no crash and no wrong answer."""
    import threading

    index = VectorIndex.create("m", DIM, capacity=16)
    vectors = unit(rng, 3000)
    index.add(list(range(100)), vectors[:100])
    errors = []

    def search():
        try:
            for i in range(300):
                label, score = index.query(vectors[i % 100], 1)[0]
                assert label == i % 100 and score > 0.999
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for start in range(100, 3000, 100):  # grows the index many times meanwhile
        index.add(list(range(start, start + 100)), vectors[start : start + 100])
        index.remove([start + 1])
    for thread in threads:
        thread.join()
    assert not errors and len(index) == 3000 - 29


def test_hamming_codes_follow_changes_without_a_rebuild(rng):
    """Items added or removed after the codes were built are found (or not) at once."""
    index = VectorIndex.create("hash", 16)
    signs = np.where(rng.standard_normal((40, 16)) > 0, 1.0, -1.0).astype(np.float32)
    vectors = signs / np.linalg.norm(signs, axis=1, keepdims=True)
    index.add(list(range(30)), vectors[:30])
    assert index.hamming_query(vectors[3], 1)[0][0] == 3  # the codes are built now
    index.add([35], vectors[35:36])
    index.remove([3])
    assert index.hamming_query(vectors[35], 1)[0][0] == 35
    assert 3 not in [label for label, _ in index.hamming_query(vectors[3], 31)]
    index.add([3], vectors[3:4])  # back again
    assert index.hamming_query(vectors[3], 1)[0][0] == 3
    assert len(index.hamming_query(vectors[0], 100)) == 31


def clustered(rng, n, dim=64, clusters=12):
    """Like an embedder's vectors: most of their spread in a few directions (here 10 of 64)."""
    basis = np.random.default_rng(7).normal(size=(10, dim))
    centres = np.random.default_rng(8).normal(size=(clusters, 10))
    latent = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, 10))
    v = (latent @ basis + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_compact_index_ranks_and_scores_by_the_full_vectors_and_survives_a_snapshot(rng, tmp_path):
    """hnswlib holds 16 of 64 numbers; the answers are still the full vectors' nearest, with
    their cosines (float16: within 2e-3), before and after a save and load, with changes made
    after the snapshot and deletes."""
    from gallery.index.compact import Projection

    vectors = clustered(rng, 600)
    index = VectorIndex.create("m", 64, projection=Projection.learn(vectors, 16), learned_on=600)
    index.add(list(range(1, 601)), vectors)
    assert index.meta.compact_dims == 16 and index.hnsw.dim == 16
    queries = clustered(rng, 30)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1

    def check(ix, removed=()):
        for q, truth in zip(queries, exact):
            truth = [int(t) for t in truth if t not in removed][:5]
            found = ix.query(q, 5)
            assert [s for _, s in found] == pytest.approx(
                [float(q @ vectors[t - 1]) for t, _ in found], abs=2e-3
            )
            assert [s for _, s in found] == pytest.approx(
                [float(q @ vectors[t - 1]) for t in truth], abs=2e-3
            )
            assert found[0][0] == truth[0]

    check(index)
    assert index.vector(7) == pytest.approx(vectors[6], abs=1e-3)
    gone = int(exact[0][0])
    index.remove([gone])
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.meta.compact_dims == 16 and len(loaded) == 599
    check(loaded, removed={gone})
    assert loaded.vector(gone) is None
    extra = clustered(rng, 1)
    loaded.add([9999], extra)  # after the snapshot: kept in memory until the next one
    loaded.add([7], vectors[8:9])  # a replaced vector: its new row wins
    assert loaded.query(extra[0], 1)[0] == (9999, pytest.approx(1.0, abs=2e-3))
    rows_file = tmp_path / "vectors.f16"
    before = rows_file.stat()
    loaded.save(tmp_path)  # the two new rows appended, the file not written anew
    after = rows_file.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size + 2 * 64 * 2)
    again = VectorIndex.load(tmp_path)
    assert again.query(extra[0], 1)[0][0] == 9999 and len(again) == 600
    assert again.vector(7) == pytest.approx(vectors[8], abs=1e-3)
    again.remove(list(range(1, 401)))  # most rows dead: the file is written anew, live rows only
    again.save(tmp_path)
    assert rows_file.stat().st_ino != after.st_ino and rows_file.stat().st_size == 201 * 64 * 2
    assert VectorIndex.load(tmp_path).vector(9999) == pytest.approx(extra[0], abs=1e-3)

    with open(tmp_path / "vectors.f16", "r+b") as fh:
        fh.truncate(1000)  # a half-written file of full vectors is refused, not served
    with pytest.raises(IndexUnusable):
        VectorIndex.load(tmp_path)


def test_a_full_index_saved_over_a_compact_one_leaves_no_compact_files(rng, tmp_path):
    from gallery.index.compact import Projection

    vectors = clustered(rng, 50)
    compact = VectorIndex.create("m", 64, projection=Projection.learn(vectors, 8))
    compact.add(list(range(50)), vectors)
    compact.save(tmp_path)
    full = VectorIndex.create("m", 64)
    full.add(list(range(50)), vectors)
    full.save(tmp_path)
    assert not any((tmp_path / name).exists() for name in ("vectors.f16", "projection.npz"))
    assert VectorIndex.load(tmp_path).meta.compact_dims == 0


def test_a_compact_index_ranks_a_small_filter_s_members_whole(rng):
    """A category of a compact index: its members ranked by their full vectors (hnswlib would
    walk far to find enough of them); labels the index does not hold and deleted ones never
    come back."""
    from gallery.index.compact import Projection

    vectors = clustered(rng, 300)
    index = VectorIndex.create("m", 64, projection=Projection.learn(vectors, 16))
    index.add(list(range(1, 301)), vectors)
    index.remove([5])
    members = {2, 5, 9, 40, 77, 123, 250, 999}
    query = clustered(rng, 1)[0]
    found = index.query(query, 10, allowed=members)
    expected = sorted({2, 9, 40, 77, 123, 250}, key=lambda label: -float(query @ vectors[label - 1]))
    assert [label for label, _ in found] == expected
    assert [s for _, s in found] == pytest.approx([float(query @ vectors[t - 1]) for t in expected], abs=2e-3)
