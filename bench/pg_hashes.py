"""Perceptual-hash lookups under `VECTOR_BACKEND=pgvector`, at N items: a `bit_count` scan of
the table in SQL (`gallery.index.pgvector_hashes.SqlHashes`) against the hashes each process holds and
keeps up to date from the table (`CachedHashes`, what searches use), in one run.

A private PostgreSQL with pgvector (PyPI `pgserver`, or `--pg-url`) gets the app's schema
(migrations) and N image rows; each gets a row in `gallery_vector` with a 256-bit hash made from
its id (two MD5s: spread like PDQ codes, unrelated to each other), written by one INSERT ...
SELECT. Queries are items' own hashes with 12 random bits flipped (a copy, as search sees one).
Each search makes the same two lookups as `search_by_image`: every item within 28 bits of the
query's 8 dihedral variants (here: the query and 7 random others) and the 2 nearest at any
distance. Reported: the first load (all hashes read once per process), each lookup's latency,
and a refresh after 1,000 new rows (an import on another machine).

    .venv/bin/python bench/pg_hashes.py --items 200000
    .venv/bin/python bench/pg_hashes.py --items 1000000"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import harness as h
import numpy as np

MODEL = "bench-hashes"
RADIUS = 28  # the search's loose hash distance (`CopyThresholds.loose_hash_distance`)


def fill(items: int, start: int = 0) -> float:
    """Image rows (made in SQL: a million through the ORM take minutes) and their hashed
    vector rows for ids start+1 .. start+items; seconds taken."""
    from django.db import connection

    from gallery.index.pgvector import TABLE
    from gallery.models import Image

    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO gallery_image (id, title, category, file, thumbnail, original_name, "
            "original_format, width, height, byte_size, sha256, status, moderation, tags, error, "
            "embed_attempts, created_at, updated_at) "
            "SELECT g, '', '', g || '.jpg', '', '', 'JPEG', 1, 1, 1, lpad(to_hex(g), 64, '0'), %s, %s, "
            "'[]'::jsonb, '', 0, now(), now() FROM generate_series(%s, %s) AS g",
            [Image.Status.INDEXED, Image.Moderation.APPROVED, start + 1, start + items],
        )
        cursor.execute(
            f"INSERT INTO {TABLE} (model_name, image_id, embedding, pdq) "
            f"SELECT %s, id, '[1,0]'::vector, "
            f"('x' || md5(id::text))::bit(128) || ('x' || md5((-id)::text))::bit(128) "
            f"FROM gallery_image WHERE id > %s AND id <= %s",
            [MODEL, start, start + items],
        )
    return time.perf_counter() - t0


def query_hashes(index, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Items' hashes with 12 bits flipped, each with 7 random other hashes (the dihedral variants)."""
    codes = index.codes
    picked = codes[rng.choice(len(codes), count, replace=False)].copy()
    out = []
    for code in picked:
        bits = np.unpackbits(code)
        bits[rng.choice(256, 12, replace=False)] ^= 1
        variants = np.packbits(rng.integers(0, 2, (7, 256), dtype=np.uint8), axis=1)
        out.append(np.vstack([np.packbits(bits), variants]).astype(np.uint8))
    return out


def timed(lookup, queries: list[np.ndarray]) -> dict:
    samples = []
    for q in queries:
        t0 = time.perf_counter()
        lookup(q)
        samples.append(time.perf_counter() - t0)
    return h.summarize_ms(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--pg-url", default="", help="a PostgreSQL with pgvector (default: start pgserver)")
    h.common_arguments(parser, redis_db=13)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-hashes-"))
    os.environ.update(
        VAR_DIR=str(tmp), DJANGO_SETTINGS_MODULE="searchsite.settings", VECTOR_BACKEND="pgvector"
    )
    os.environ["DATABASE_URL"] = args.pg_url or h.start_pgserver(tmp, "hashes")
    import django

    django.setup()
    from django.core.management import call_command

    from gallery.index.pgvector import ensure_schema
    from gallery.index.pgvector_hashes import CachedHashes, SqlHashes

    call_command("migrate", verbosity=0)
    ensure_schema()
    seconds = fill(args.items)
    h.log(f"{args.items} items with hashes in {seconds:.0f} s")

    cached = CachedHashes(MODEL)
    t0 = time.perf_counter()
    cached.current(expected=args.items)  # starts the load in the background
    cached.wait()
    view = cached.current(expected=args.items)
    load_s = time.perf_counter() - t0
    h.log(f"cached: first load {load_s:.2f} s ({len(view)} hashes)")
    sql = SqlHashes(MODEL)
    queries = query_hashes(view, args.queries, rng)
    figures: dict = {"items": args.items, "first_load_s": round(load_s, 2)}
    for name, index in (("sql_scan", sql), ("cached", view)):
        within = timed(lambda q, index=index: index.within(q, RADIUS), queries)
        nearest = timed(lambda q, index=index: index.nearest(q[0], 2), queries)
        figures[name] = {"within": within, "nearest": nearest}
        h.log(f"{name}: within {RADIUS} bits {h.fmt_summary(within)} | nearest 2 {h.fmt_summary(nearest)}")
    same = sum(
        [(m.label, m.distance) for m in sql.within(q, RADIUS)]
        == [(m.label, m.distance) for m in view.within(q, RADIUS)]
        for q in queries
    )
    figures["same_answers"] = f"{same}/{len(queries)}"
    h.log(f"the same items and distances within {RADIUS} bits: {figures['same_answers']}")
    fill(1000, start=args.items)
    time.sleep(1.1)
    t0 = time.perf_counter()
    view = cached.current(expected=args.items + 1000)
    figures["refresh_after_1000_new_s"] = round(time.perf_counter() - t0, 3)
    figures["held_after_refresh"] = len(view)
    h.log(f"refresh after 1,000 new rows: {figures['refresh_after_1000_new_s']} s ({len(view)} hashes)")
    figures["speedup_p50"] = {
        kind: round(figures["sql_scan"][kind]["p50_ms"] / max(figures["cached"][kind]["p50_ms"], 1e-3), 1)
        for kind in ("within", "nearest")
    }
    h.log(f"cached over SQL scan, p50: {figures['speedup_p50']}")
    h.write_result(
        args.results,
        "pg_hashes",
        vars(args) | {"datasets": str(args.datasets)},
        figures,
        full_size=args.items >= 1_000_000,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
