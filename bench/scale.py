"""The index layer at scale, in-process: gallery.index.VectorIndex (hnswlib) at 200k or 1M items,
and with `--pgvector` the same vectors in PostgreSQL (gallery.index.pgvector) side by side.

Vectors are realistic, not noise: R real photos (CIFAR-10 `train/` and the product photos) are
embedded by the app's default embedder as gallery vectors; the rest are synthesised from them as
perturbed mixtures of real neighbours (x_i + a (x_j - x_i) + noise, x_j among x_i's 10 nearest,
renormalised), so they keep the real vectors' clusters and spread. Queries are Q other real
photos (CIFAR-10 `test/`) embedded as queries are. Reported:

- the form of the vectors in hnswlib: compact (the app's rule, `INDEX_COMPACT_*`: from 100,000
  items a PCA to 256 numbers learned on the vectors, the full ones as float16 beside it for the
  re-rank) or full (`--compact 0`);
- build: inserts/s (both cores), snapshot bytes, write (with its read-back check) and load time;
- memory: the process's resident growth while the index is built and loaded;
- recall@10 of the index against an exact (brute-force) search of the same vectors;
- search latency (the index alone: no decoding or embedding) with 1 and 8 threads, p50/p95/p99;
- one client's search with the query's embedding: a 768x1024 JPEG decoded, embedded and hashed,
  the hash lookups over as many codes as items, the index's nearest (`measure_query_path`);
- filtered search for categories of 1 %, 10 % and 50 % of the items, by each primitive the app's
  category rule chooses from (`selectors.search._category_hits`): an exact scan of the members'
  vectors (the app reads them from the database first: not counted here), an unfiltered search
  over-fetched by the share, `VectorIndex.query` with a set (hnswlib's filter; a compact index
  ranks a set of up to 20,000 whole);
- the journal: how fast a reader applies changes (adds/s), as every process does after an update,
  and the next snapshot's cost (compact: the full vectors' file is appended to);
- with `--pgvector`: a PostgreSQL 16 with pgvector 0.6.2 (PyPI `pgserver`, started here, or
  `--pg-url`) holding the same vectors under the app's own `PgVectorIndex`: the build as a model
  version's is built before its switch (`PgVectorIndex.load`: rows copied in, the HNSW index
  built once after), then inserts/s of rows added to the built index a batch at a time (as
  uploads are), table and index size on disk, recall@10, search latency
  with 1 and 8 threads (a connection each), filtered search (exact scan of 1 %, over-fetch of
  10 % and 50 %).

    .venv/bin/python bench/scale.py --items 200000
    .venv/bin/python bench/scale.py --items 1000000 --real 6000   # about an hour of inserts here
    .venv/bin/python bench/scale.py --items 20000 --real 1000 --queries 100   # quick
    .venv/bin/python bench/scale.py --items 50000 --pgvector   # both backends side by side
    .venv/bin/python bench/scale.py --items 20000 --compact 256   # compact below the app's threshold
    .venv/bin/python bench/scale.py --kept /tmp/bench-scale-XXXX/index   # one client's search on a kept index, alone

Upload -> searchable, search over HTTP and search while an import runs are measured against the
running app by import_throughput.py and search_latency.py (its --synthetic index)."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the web process runs (searchsite/gunicorn.conf.py)

import argparse
import gc
import io
import random
import resource
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import harness as h
import numpy as np
from harness.edits_base import phone_photo
from harness.synthetic import synthesise

CIFAR = "cifar10-jpg.zip"
PRODUCTS = "fashion-products-6k.zip"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def read_images(zip_path: Path, names: list[str]):
    from PIL import Image

    with zipfile.ZipFile(zip_path) as zf:
        for name in names:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                yield im.convert("RGB")


def embed(zip_path: Path, names: list[str], *, gallery: bool, batch: int = 64) -> np.ndarray:
    from gallery.embedders import get_embedder

    embedder = get_embedder()
    out, pending = [], []
    for im in read_images(zip_path, names):
        pending.append(im)
        if len(pending) == batch:
            out.append(embedder.embed_gallery(pending) if gallery else embedder.embed(pending))
            pending = []
    if pending:
        out.append(embedder.embed_gallery(pending) if gallery else embedder.embed(pending))
    return np.concatenate(out).astype(np.float32)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best = np.zeros((len(queries), 0), dtype=np.int64)
    scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), 100000):
        s = queries @ vectors[start : start + 100000].T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best = np.concatenate([best, top + start], axis=1)
        scores = np.concatenate([scores, np.take_along_axis(s, top, axis=1)], axis=1)
        keep = np.argsort(-scores, axis=1)[:, :k]
        best, scores = np.take_along_axis(best, keep, axis=1), np.take_along_axis(scores, keep, axis=1)
    return best


def timed_searches(fn, queries: np.ndarray, threads: int, repeat: int, done=None) -> dict:
    """Latency of `fn(query)` from `threads` threads at once (`done()` ends each thread)."""
    samples: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        mine = []
        try:
            for r in range(repeat):
                q = queries[(offset + r) % len(queries)]
                t0 = time.perf_counter()
                fn(q)
                mine.append(time.perf_counter() - t0)
        finally:
            if done is not None:
                done()
        with lock:
            samples.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t * 37,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    return {**h.summarize_ms(samples), "threads": threads, "throughput_qps": round(len(samples) / wall, 1)}


def use_pgvector(args, tmp: Path) -> None:
    """With --pgvector, the app's database is the PostgreSQL the vectors go to."""
    if not args.pgvector:
        return
    # Configured as a database server is (pgvector's advice, PgTune's rule): a quarter of the
    # memory for shared buffers, so the HNSW index stays in them.
    quarter = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4 // 2**20
    os.environ["DATABASE_URL"] = args.pg_url or h.start_pgserver(tmp, "scale", shared_buffers=f"{quarter}MB")
    os.environ["VECTOR_BACKEND"] = "pgvector"


def _pg_filtered(index, members: np.ndarray, share: float, items: int, fetch: int):
    """The app's way to a category's nearest in pgvector: an exact scan of a small one's
    members, an over-fetched unfiltered search of a large one, members kept."""
    if share < 0.02:
        allowed = set(members.tolist())
        return "exact_scan", lambda q: index.query(q, fetch, allowed)
    over = min(items, int(2 * fetch / share) + 10)
    is_member = np.zeros(items + 1, dtype=bool)
    is_member[members] = True

    def overfetch(q):
        return [label for label, _ in index.query(q, over) if is_member[label]][:fetch]

    return "overfetch_check", overfetch


def measure_pgvector(
    args, model: str, dim: int, held: list, queries, truth, rng, photos, projection=None
) -> dict:
    """With --pgvector, the same vectors, searches and filters through the app's
    `PgVectorIndex`: {"pgvector": figures}. With `projection` (hnswlib's), compact vectors as
    in hnswlib: the HNSW index over the projected rows, the first candidates re-ranked.
    `held` holds the vectors, let go once they are in the database: the searches are measured
    with the memory a database server would have (this process's 6 GB of vectors at a million
    items left PostgreSQL's re-rank reading from disk)."""
    if not args.pgvector:
        return {}
    vectors = held.pop()
    from django.conf import settings
    from django.db import connection, connections

    from gallery.index.pgvector import PgVectorIndex
    from gallery.models import Image

    figures: dict = {}
    extra = min(2000, max(100, args.items // 50))  # rows added one batch at a time after the build
    t0 = time.perf_counter()
    total_rows = args.items + extra
    # The rows the vectors belong to (a foreign key): one made by the ORM, the rest copied from it
    # in SQL (a million through bulk_create took about ten minutes).
    Image.objects.create(
        pk=1,
        title="",
        file="0.jpg",
        width=1,
        height=1,
        byte_size=1,
        sha256=f"{0:064x}",
        status=Image.Status.INDEXED,
    )
    columns = [f.column for f in Image._meta.concrete_fields]
    made = {"id": "g", "file": "(g - 1)::text || '.jpg'", "sha256": "lpad(to_hex(g - 1), 64, '0')"}
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO gallery_image ({', '.join(columns)}) "
            f"SELECT {', '.join(made.get(c, c) for c in columns)} "
            "FROM gallery_image, generate_series(2, %s) AS g WHERE id = 1",
            [total_rows],
        )
    h.log(f"pgvector: {total_rows} image rows in {time.perf_counter() - t0:.0f} s")
    index = PgVectorIndex(
        model,
        dim,
        ef=settings.INDEX_EF_SEARCH,
        m=settings.INDEX_M,
        ef_construction=settings.INDEX_EF_CONSTRUCTION,
    )
    # As a model version is built before its switch (`index_build`): rows copied in, the HNSW
    # index built once after them.
    t0 = time.perf_counter()
    chunks = (
        [(i + 1, vectors[i], None) for i in range(s, min(args.items, s + 5000))]
        for s in range(0, args.items, 5000)
    )
    index.load(chunks, projection=projection)
    build = time.perf_counter() - t0
    figures["compact_dims"] = index.meta.compact_dims
    # Then uploads: rows inserted into the built graph, a batch at a time.
    t0 = time.perf_counter()
    for start in range(0, extra, 100):
        index.put([(args.items + i + 1, vectors[i], None) for i in range(start, min(extra, start + 100))])
    inserts = time.perf_counter() - t0
    index.remove([args.items + i + 1 for i in range(extra)])  # the searches below see the build's rows
    del vectors, chunks
    gc.collect()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('gallery_vector'), pg_indexes_size('gallery_vector')")
        total, indexes = cursor.fetchone()
        cursor.execute("SHOW shared_buffers")
        figures["shared_buffers"] = cursor.fetchone()[0]
    figures["build"] = {
        "seconds": round(build, 1),
        "rows_per_s": round(args.items / build, 1),
        "inserts_after": extra,
        "inserts_per_s": round(extra / inserts, 1),
        "table_bytes": int(total),
        "index_bytes": int(indexes),
    }
    h.log(f"pgvector built: {figures['build']}")
    found = [[label - 1 for label, _ in index.query(q, 10)] for q in queries]
    figures["recall@10"] = round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])), 4)
    h.log(f"pgvector recall@10 against exact search: {figures['recall@10']}")
    if index.projection is not None:  # the graph's ef and the re-rank's depth
        app = index.rerank, index.compact_ef
        figures["rerank"] = {}
        for depth, ef in ((200, 400), (200, 800), (400, 800)):
            index.rerank, index.compact_ef = depth, ef
            top = [[label - 1 for label, _ in index.query(q, 10)] for q in queries]
            level = timed_searches(lambda q: index.query(q, 20), queries, 1, max(50, args.repeat // 2))
            level["recall@10"] = round(
                float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(top, truth)])), 4
            )
            figures["rerank"][f"{depth} of ef {ef}"] = level
            h.log(
                f"  pgvector ef {ef}, re-rank {depth}: recall@10 {level['recall@10']}, {h.fmt_summary(level)}"
            )
        index.rerank, index.compact_ef = app

    def autovacuum_workers() -> int:
        """Autovacuum workers running now (they take a core from the measured searches)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
            return int(cursor.fetchone()[0])

    figures["autovacuum_workers"] = {"before_searches": autovacuum_workers()}
    close = connections.close_all
    figures["search"] = [
        timed_searches(lambda q: index.query(q, 20), queries, n, args.repeat, done=close) for n in (1, 8)
    ]
    for level in figures["search"]:
        h.log(
            f"  pgvector search, {level['threads']} threads: {h.fmt_summary(level)}  {level['throughput_qps']} q/s"
        )
    # One client's whole search, as hnswlib's above (the same hash lookups, this index's search).
    figures["autovacuum_workers"]["before_query_path"] = autovacuum_workers()
    figures["query_path"] = measure_query_path(index, photos, args.items, rng, 100)
    figures["autovacuum_workers"]["after_query_path"] = autovacuum_workers()
    h.log(f"  pgvector one client's search, total: {h.fmt_summary(figures['query_path']['total'])}")
    labels = np.arange(1, args.items + 1, dtype=np.int64)
    filtered = {}
    fetch = 30
    for share in (0.01, 0.10, 0.50):
        members = np.sort(rng.choice(labels, int(share * args.items), replace=False))
        name, fn = _pg_filtered(index, members, share, args.items, fetch)
        filtered[f"{int(share * 100)}%"] = {name: timed_searches(fn, queries, 1, max(20, args.repeat // 4))}
        h.log(
            f"  pgvector category {share:.0%}: {name} p50 {filtered[f'{int(share * 100)}%'][name]['p50_ms']} ms"
        )
    figures["filtered"] = filtered
    return {"pgvector": figures}


def query_photos(zip_path: Path, names: list[str]) -> list[bytes]:
    """Product photos as a phone sends them: 768x1024 JPEGs."""
    return [phone_photo(im) for im in read_images(zip_path, names)]


def measure_query_path(index, photos: list[bytes], items: int, rng: np.random.Generator, repeat: int) -> dict:
    """One client's search at this size with the query's embedding: decode a 768x1024 JPEG
    (the search's reduced-scale draft), its vector and PDQ hashes (mirrors and turns), the
    index's 30 nearest, and the hash lookups over as many codes as items (multi-index within
    the loose radius, the exact nearest scan). The pipeline's other stages work on a fixed
    number of candidates, whatever the size. As in the search, the hashes and their lookups
    run in a helper thread beside the embedding and the index: `hashes` is what is left to
    wait for after the index answered."""
    from django.conf import settings

    from gallery.embedders import get_embedder
    from gallery.imaging import decode_image
    from gallery.retrieval.hashes import HashIndex, pdq_dihedral
    from gallery.retrieval.params import retrieval_params
    from gallery.selectors.search_slots import beside

    embedder = get_embedder()
    codes = rng.integers(0, 256, (items, 32), dtype=np.uint8)
    t0 = time.perf_counter()
    hashes = HashIndex(np.arange(1, items + 1), codes)
    hashes.nearest(codes[0], 1)  # its columns, built once per index version
    build_s = time.perf_counter() - t0
    radius = retrieval_params().copies.loose_hash_distance
    stages: dict[str, list[float]] = {"decode_embed": [], "vector_index": [], "hashes": [], "total": []}

    def hash_lookups(picture):
        own, _ = pdq_dihedral(picture)
        return own, hashes.within(own, radius), hashes.nearest(own[0], 2)

    for r in range(repeat + 3):
        t0 = time.perf_counter()
        picture = decode_image(
            photos[r % len(photos)],
            max_bytes=settings.UPLOAD_MAX_BYTES,
            max_pixels=settings.UPLOAD_MAX_PIXELS,
            draft_size=2 * settings.EMBEDDER_IMAGE_SIZE,
        ).image
        hashed = beside(hash_lookups, picture.copy())  # as the search does: beside the vector's work
        vector = embedder.embed([picture])[0]
        t1 = time.perf_counter()
        index.query(vector, 30)
        t2 = time.perf_counter()
        hashed.result()
        t3 = time.perf_counter()
        if r >= 3:  # the first ones warm the embedder
            for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                stages[name].append(value)
    return {"hash_index_build_seconds": round(build_s, 2)} | {
        name: h.summarize_ms(values) for name, values in stages.items()
    }


def measure_filtered(index, vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, rng, args) -> dict:
    """Categories of 1 %, 10 % and 50 % of the items, by each primitive the app chooses from."""
    filtered = {}
    fetch = 30  # what the app fetches for k=20
    for share in (0.01, 0.10, 0.50):
        members = np.sort(rng.choice(labels, int(share * args.items), replace=False))
        member_set = set(members.tolist())
        is_member = np.zeros(args.items + 1, dtype=bool)
        is_member[members] = True
        over = min(args.items, int(2 * fetch / share) + 10)

        member_vectors = vectors[members - 1]  # as the app reads them from the database

        def scan(q, member_vectors=member_vectors, members=members):
            return members[np.argsort(-(member_vectors @ q))[:fetch]]

        def overfetch(q, is_member=is_member, over=over):
            return [label for label, _ in index.query(q, over) if is_member[label]][:fetch]

        def with_set(q, member_set=member_set):
            return index.query(q, fetch, allowed=member_set)

        row = {}
        for name, fn in (("exact_scan", scan), ("overfetch_check", overfetch), ("hnsw_set_filter", with_set)):
            row[name] = timed_searches(fn, queries, 1, max(20, args.repeat // 4))
        t0 = time.perf_counter()
        for _ in range(5):
            set(members.tolist())
        row["set_build_ms"] = round((time.perf_counter() - t0) / 5 * 1000, 2)
        filtered[f"{int(share * 100)}%"] = row
        h.log(
            f"  category {share:.0%}: scan p50 {row['exact_scan']['p50_ms']} ms, over-fetch "
            f"{row['overfetch_check']['p50_ms']} ms, set filter {row['hnsw_set_filter']['p50_ms']} ms "
            f"(+ set {row['set_build_ms']} ms)"
        )
    return filtered


def memory_mb() -> dict:
    """This process's resident and proportional (shared pages split) memory."""
    out = {"rss_mb": round(rss_mb(), 1)}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                out["pss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


def measure_kept(args) -> int:
    """One client's search on a kept index, alone in a fresh process (`--kept`)."""
    os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="bench-scale-kept-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from gallery.index import VectorIndex

    products = h.require_dataset(args.datasets, PRODUCTS)
    before = memory_mb()
    t0 = time.perf_counter()
    index = VectorIndex.load(args.kept, ef=settings.INDEX_EF_SEARCH)
    figures: dict = {"items": len(index), "compact_dims": index.meta.compact_dims}
    figures["load_seconds"] = round(time.perf_counter() - t0, 2)
    figures["memory_loaded"] = memory_mb()
    photos = query_photos(products, random.Random(args.seed).sample(h.zip_image_names(products), 50))
    rng = np.random.default_rng(args.seed)
    figures["query_path"] = measure_query_path(index, photos, len(index), rng, 300)
    figures["memory_after_searches"] = memory_mb()
    figures["memory_before_load"] = before
    labels = np.array(sorted(index.labels()), dtype=np.int64)
    queries = embed(
        h.require_dataset(args.datasets, CIFAR),
        random.Random(args.seed).sample(
            [n for n in h.zip_image_names(h.require_dataset(args.datasets, CIFAR)) if "/test/" in f"/{n}"],
            100,
        ),
        gallery=False,
    )
    figures["filtered_query"] = {}
    for share in (0.01, 0.02, 0.10):
        members = set(rng.choice(labels, int(share * len(labels)), replace=False).tolist())
        row = timed_searches(lambda q, members=members: index.query(q, 30, allowed=members), queries, 1, 50)
        figures["filtered_query"][f"{share:.0%}"] = row
        h.log(f"  category {share:.0%}: VectorIndex.query with the set {h.fmt_summary(row)}")
    for stage, value in figures["query_path"].items():
        shown = value if isinstance(value, float) else h.fmt_summary(value)
        h.log(f"  one client's search, {stage}: {shown}")
    h.log(
        f"Memory: before {before}, loaded {figures['memory_loaded']}, after {figures['memory_after_searches']}"
    )
    h.write_result(
        args.results,
        "scale-kept",
        vars(args) | {"datasets": str(args.datasets), "kept": str(args.kept)},
        figures,
        full_size=len(index) >= 200_000,
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--real", type=int, default=3000, help="real photos embedded (the rest synthesised)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=200, help="searches per thread per latency level")
    parser.add_argument(
        "--compact",
        type=int,
        default=-1,
        help="numbers per vector in hnswlib (0: full vectors; default: the app's INDEX_COMPACT_* rule)",
    )
    parser.add_argument("--pgvector", action="store_true", help="also measure PostgreSQL + pgvector")
    parser.add_argument("--pg-url", default="", help="a PostgreSQL with pgvector (default: start pgserver)")
    parser.add_argument(
        "--kept",
        type=Path,
        help="an index folder an earlier run left (its VAR_DIR/index): measure one client's search on it alone",
    )
    h.common_arguments(parser, redis_db=13)
    args = parser.parse_args(argv)
    if args.kept:
        return measure_kept(args)
    cifar = h.require_dataset(args.datasets, CIFAR)
    products = h.require_dataset(args.datasets, PRODUCTS)
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ.setdefault("VAR_DIR", str(tmp))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    use_pgvector(args, tmp)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)  # a throw-away database: the embedders read the active model

    from gallery.embedders import active_model, embedder_identity
    from gallery.index import JournalBatch, VectorIndex
    from gallery.index.compact import Projection
    from gallery.services.index_compact import compact_dims

    model, dim = embedder_identity()
    figures: dict = {"items": args.items, "model": model, "dim": dim}
    train = [n for n in h.zip_image_names(cifar) if "/train/" in f"/{n}"]
    test = [n for n in h.zip_image_names(cifar) if "/test/" in f"/{n}"]
    half = args.real // 2
    t0 = time.perf_counter()
    real = np.concatenate(
        [
            embed(cifar, pick.sample(train, half), gallery=True),
            embed(products, pick.sample(h.zip_image_names(products), args.real - half), gallery=True),
        ]
    )
    queries = embed(cifar, pick.sample(test, args.queries), gallery=False)
    figures["embed_seconds"] = round(time.perf_counter() - t0, 1)
    h.log(f"Embedded {len(real)} real photos and {len(queries)} queries in {figures['embed_seconds']} s")
    vectors = synthesise(real, args.items, rng)
    labels = np.arange(1, args.items + 1, dtype=np.int64)

    rss0 = rss_mb()
    dims = args.compact if args.compact >= 0 else compact_dims(active_model(), args.items)
    t0 = time.perf_counter()
    projection = Projection.learn(vectors, dims) if dims else None
    figures["compact"] = {"dims": dims, "learn_seconds": round(time.perf_counter() - t0, 1)}
    h.log(f"Vectors in hnswlib: {dims or dim} numbers ({figures['compact']})")
    index = VectorIndex.create(
        model,
        dim,
        capacity=args.items,
        m=settings.INDEX_M,
        ef_construction=settings.INDEX_EF_CONSTRUCTION,
        ef=settings.INDEX_EF_SEARCH,
        projection=projection,
        learned_on=args.items,
    )
    t0 = time.perf_counter()
    for start in range(0, args.items, 10000):
        index.add(labels[start : start + 10000].tolist(), vectors[start : start + 10000])
        if start and start % 100000 == 0:
            h.log(f"  {start} inserted ({start / (time.perf_counter() - t0):.0f}/s)")
    build = time.perf_counter() - t0
    figures["build"] = {
        "seconds": round(build, 1),
        "inserts_per_s": round(args.items / build, 1),
        "rss_growth_mb": round(rss_mb() - rss0, 1),
    }
    h.log(f"Built: {figures['build']}")
    directory = tmp / "index"
    t0 = time.perf_counter()
    index.save(directory)
    write_s = time.perf_counter() - t0
    del index
    rss1 = rss_mb()
    t0 = time.perf_counter()
    index = VectorIndex.load(directory, ef=settings.INDEX_EF_SEARCH)
    full_file = directory / "vectors.f16"
    figures["snapshot"] = {
        "bytes": (directory / "index.bin").stat().st_size,
        "full_vectors_bytes": full_file.stat().st_size if full_file.exists() else 0,
        "write_seconds": round(write_s, 2),
        "load_seconds": round(time.perf_counter() - t0, 2),
        "rss_of_a_loaded_copy_mb": round(rss_mb() - rss1, 1),
    }
    h.log(f"Snapshot: {figures['snapshot']}")

    truth = exact_top(vectors, queries, 10)
    found = [[label - 1 for label, _ in index.query(q, 10)] for q in queries]
    figures["recall@10"] = round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])), 4)
    h.log(f"recall@10 against exact search: {figures['recall@10']}")

    figures["search"] = [
        timed_searches(lambda q: index.query(q, 20), queries, n, args.repeat) for n in (1, 8)
    ]
    for level in figures["search"]:
        h.log(f"  search, {level['threads']} threads: {h.fmt_summary(level)}  {level['throughput_qps']} q/s")

    photos = query_photos(products, pick.sample(h.zip_image_names(products), 50))
    figures["query_path"] = measure_query_path(index, photos, args.items, rng, 100)
    for stage, value in figures["query_path"].items():
        shown = value if isinstance(value, float) else h.fmt_summary(value)
        h.log(f"  one client's search, {stage}: {shown}")
    figures["filtered"] = measure_filtered(index, vectors, labels, queries, rng, args)

    extra = synthesise(real, len(real) + 2000, rng)[len(real) :]
    batch = JournalBatch(0, list(range(args.items + 1, args.items + 2001)), extra, [], [], False)
    t0 = time.perf_counter()
    index.apply(batch)
    figures["journal_replay_adds_per_s"] = round(2000 / (time.perf_counter() - t0), 1)
    h.log(f"A reader applies journal adds at {figures['journal_replay_adds_per_s']}/s")
    t0 = time.perf_counter()
    index.save(directory)  # the next snapshot, 2,000 changes later
    figures["snapshot_after_2000_adds_seconds"] = round(time.perf_counter() - t0, 2)
    h.log(f"The next snapshot, 2,000 adds later: {figures['snapshot_after_2000_adds_seconds']} s")
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    h.log(f"The index stays in {directory} (for --kept; remove the folder when done)")
    held = [vectors]
    del vectors, extra, batch  # the hnswlib side is measured: its memory goes
    index = None
    gc.collect()
    figures |= measure_pgvector(args, model, dim, held, queries, truth, rng, photos, projection)
    h.write_result(
        args.results,
        "scale",
        vars(args) | {"datasets": str(args.datasets)},
        figures,
        full_size=args.items >= 200_000,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
