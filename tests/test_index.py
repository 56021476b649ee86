"""The hnswlib wrapper: growth, k clamping, deletes, atomic saves, readers that follow."""

import json
import os

import numpy as np
import pytest

from gallery.index import INDEX_FILE, META_FILE, IndexMeta, IndexReader, VectorIndex, write_lock

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
