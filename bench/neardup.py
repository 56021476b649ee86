"""Near-duplicate (copy) search on the fashion catalogue: recall@1 and recall@10.

Imports the 6,000 product photos of fashion-products-6k.zip through `manage.py import_images`
(which returns once they are searchable), then queries `POST /api/search` (k=10) with edited
copies of catalogue photos chosen with a fixed seed. Each edit kind gets the same share of the
queries. The original (matched by title = file stem; import titles are file stems and the
fashion ids are unique) must come first.

    .venv/bin/python bench/neardup.py                      # full size: 6,000 photos, 500 queries
    .venv/bin/python bench/neardup.py --limit 300 --queries 50
    .venv/bin/python bench/neardup.py --compact 256        # the index's compact form (issue 15)

Queries without the JPEG edit are sent as PNG so that only the named edit applies. Catalogue
photos whose decoded pixels are identical count as the same original (the import stores
byte-identical files once; the report says how many such groups there are)."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zipfile
from pathlib import PurePosixPath

import harness as h

DATASET = "fashion-products-6k.zip"
TARGET_R1, TARGET_R10 = 0.95, 0.99


# --- edits: shared with `evaluate_model --protocol neardup` ------------------------------------

from gallery.learning.edits import EDIT_KINDS, apply_edit  # noqa: E402

# --- main ----------------------------------------------------------------------------------------


def compact_during_import(app: h.BenchApp, compact: int) -> None:
    """With --compact: none during the import (one build of the whole gallery after it)."""
    if compact:
        app.env.update(INDEX_COMPACT_DIMS=str(compact), INDEX_COMPACT_MIN_ITEMS=str(10**9))


def index_built(app: h.BenchApp, compact: int) -> dict:
    """The index's meta.json once it is in the asked form (--compact: built again compact)."""
    if compact:
        app.run_manage(["rebuild_index"], env={"INDEX_COMPACT_MIN_ITEMS": "1"})
        time.sleep(5)  # the web process loads the new generation in the background
    meta: dict = json.loads((app.index_dir / "meta.json").read_text())
    h.log(f"Index: {meta['count']} items, {meta.get('compact_dims') or 'full'} numbers per vector in hnswlib")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="import only N catalogue photos (seeded sample)")
    parser.add_argument(
        "--queries", type=int, default=500, help="number of edited queries (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=10, help="results asked per query (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=0, help="give up the import after this many seconds")
    parser.add_argument(
        "--compact",
        type=int,
        default=0,
        help="after the import, build the index again with its vectors projected to this many numbers "
        "(INDEX_COMPACT_DIMS, whatever the gallery's size) and query that",
    )
    h.common_arguments(parser, redis_db=9)
    args = parser.parse_args(argv)
    h.install_signal_handlers()

    zip_path = h.require_dataset(args.datasets, DATASET)
    names = h.zip_image_names(zip_path)
    rng = random.Random(args.seed)
    catalogue = sorted(rng.sample(names, args.limit)) if 0 < args.limit < len(names) else names
    with zipfile.ZipFile(zip_path) as zf:
        files = {name: zf.read(name) for name in catalogue}
    same = h.pixel_groups(files)
    dup_groups = len({frozenset(g) for g in same.values() if len(g) > 1})

    # Queries: distinct catalogue photos (seeded), edit kinds in turn so each gets an equal share.
    qrng = random.Random(args.seed + 1)
    order = qrng.sample(catalogue, len(catalogue))
    picked = [order[i % len(order)] for i in range(args.queries)]
    queries = []
    for i, name in enumerate(picked):
        kind = EDIT_KINDS[i % len(EDIT_KINDS)]
        data, ext = apply_edit(files[name], kind)
        stem = PurePosixPath(name).stem
        queries.append({"stem": stem, "kind": kind, "data": data, "filename": f"q{i}-{stem}.{ext}"})
    h.log(
        f"Catalogue: {len(catalogue)} photos from {zip_path.name} ({dup_groups} groups of pixel-identical "
        f"photos); {len(queries)} edited queries over {len(EDIT_KINDS)} edit kinds."
    )

    with h.BenchApp("neardup", args) as app:
        app.prepare()
        compact_during_import(app, args.compact)
        app.start()
        source = (
            zip_path
            if len(catalogue) == len(names)
            else h.write_subset_zip(zip_path, catalogue, app.tmp / "catalogue.zip")
        )
        h.log(f"Importing {len(catalogue)} photos with import_images ...")
        imported = app.import_images(source, extra=["--timeout", str(args.timeout)] if args.timeout else None)
        h.log(
            f"Import: {imported['seconds']:.1f} s until searchable "
            f"(new {imported.get('new')}, already present {imported.get('duplicates')}, "
            f"refused {imported.get('refused')}, failed {imported.get('failed')})."
        )
        h.log(f"    then {app.wait_until_settled():.0f} s until the photos' features were kept")

        index_meta = index_built(app, args.compact)

        api = h.Api(app.base_url)
        for q in queries[:3]:  # warm-up, not counted
            api.search(q["data"], q["filename"], k=args.k)
        h.log(f"Querying {len(queries)} edited copies (k={args.k}) ...")
        started = time.perf_counter()
        for q in queries:
            body = api.search(q["data"], q["filename"], k=args.k)
            results = body["results"]
            titles = [r["title"] for r in results]
            good = same.get(q["stem"], {q["stem"]})
            q["rank"] = next((i + 1 for i, t in enumerate(titles) if t in good), None)
            q["top1"] = (titles[0], results[0]["score"]) if results else (None, None)
            q["took_ms"] = body.get("took_ms")
        query_seconds = time.perf_counter() - started
        api.close()

    # --- figures ---
    def recall(items, n):
        return (
            sum(1 for q in items if q["rank"] is not None and q["rank"] <= n) / len(items) if items else 0.0
        )

    per_kind = {}
    for kind in EDIT_KINDS:
        items = [q for q in queries if q["kind"] == kind]
        if items:
            per_kind[kind] = {
                "n": len(items),
                "recall@1": round(recall(items, 1), 4),
                "recall@10": round(recall(items, 10), 4),
            }
    r1, r10 = recall(queries, 1), recall(queries, 10)
    mrr = sum(1 / q["rank"] for q in queries if q["rank"]) / len(queries)
    passed = r1 >= TARGET_R1 and r10 >= TARGET_R10
    failures = [
        {
            "kind": q["kind"],
            "query": q["stem"],
            "rank": q["rank"],
            "top1": q["top1"][0],
            "top1_score": q["top1"][1],
        }
        for q in queries
        if q["rank"] != 1
    ]

    h.log(f"\nNear-duplicate search: {len(queries)} queries, catalogue {len(catalogue)}, k={args.k}")
    h.log(f"{'edit':<26}{'n':>5}{'recall@1':>11}{'recall@10':>11}")
    for kind, f in per_kind.items():
        h.log(f"{kind:<26}{f['n']:>5}{f['recall@1']:>11.3f}{f['recall@10']:>11.3f}")
    h.log(f"{'ALL':<26}{len(queries):>5}{r1:>11.3f}{r10:>11.3f}   (MRR@{args.k} {mrr:.3f})")
    h.log(
        f"Targets: recall@1 >= {TARGET_R1} [{'PASS' if r1 >= TARGET_R1 else 'FAIL'}], "
        f"recall@10 >= {TARGET_R10} [{'PASS' if r10 >= TARGET_R10 else 'FAIL'}]  => {'PASS' if passed else 'FAIL'}"
    )
    if failures:
        h.log(f"First misses (of {len(failures)} queries not ranked first):")
        for f in failures[:10]:
            h.log(
                f"  {f['kind']:<26} {f['query']:>8}: rank {f['rank']}, top-1 {f['top1']} ({f['top1_score']})"
            )
    h.log(f"Import {imported['seconds']:.1f} s; {len(queries)} queries in {query_seconds:.1f} s.")

    figures = {
        "catalogue": len(catalogue),
        "queries": len(queries),
        "recall@1": round(r1, 4),
        "recall@10": round(r10, 4),
        "mrr@k": round(mrr, 4),
        "per_kind": per_kind,
        "pass": passed,
        "targets": {"recall@1": TARGET_R1, "recall@10": TARGET_R10},
        "pixel_duplicate_groups": dup_groups,
        "import": {
            k: imported.get(k)
            for k in ("seconds", "stored_seconds", "new", "duplicates", "refused", "searchable", "failed")
        },
        "query_seconds": round(query_seconds, 2),
        "index_compact_dims": index_meta.get("compact_dims", 0),
        "server_took_ms": h.summarize_ms(
            [q["took_ms"] / 1000 for q in queries if q.get("took_ms") is not None]
        ),
        "misses": failures[:50],
    }
    params = {
        "limit": args.limit or None,
        "queries": args.queries,
        "k": args.k,
        "seed": args.seed,
        "edit_kinds": EDIT_KINDS,
        "dataset": DATASET,
    }
    h.write_result(
        args.results,
        "neardup",
        params,
        figures,
        full_size=len(catalogue) == len(names) and args.queries >= 500,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
