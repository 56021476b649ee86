"""Import throughput: images per second of `manage.py import_images` on the 10,000 CIFAR-10
`test/` photos, measured until all are searchable; beside it, in the same run, the embedder's
raw throughput on the same images (decoded first, then `get_embedder().embed` in batches of 32,
in this process, before the app starts) and the ratio; and the time from one upload
(`POST /api/images`) until a search with the same image returns its id (median of ~10 fresh,
distinct CIFAR-10 `train/` photos, uploaded one after the other into the imported gallery).

    .venv/bin/python bench/import_throughput.py               # full size: 10,000 images
    .venv/bin/python bench/import_throughput.py --limit 500

The selected `test/` files are written to a temporary folder `<class>/<name>.jpg` (so the
class becomes the category). One upload before the import warms the workers up (model loaded,
index created); it is not counted."""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import PurePosixPath

import _harness as h
from PIL import Image

DATASET = "cifar10-jpg.zip"


def pick_test_files(names: list[str], limit: int) -> list[str]:
    """All of them, or `limit` spread evenly over the classes (round robin, sorted)."""
    if not limit or limit >= len(names):
        return names
    by_class = defaultdict(list)
    for name in names:
        by_class[PurePosixPath(name).parts[-2]].append(name)
    columns = [by_class[c] for c in sorted(by_class)]
    picked = []
    for i in range(max(len(c) for c in columns)):
        for column in columns:
            if i < len(column):
                picked.append(column[i])
                if len(picked) == limit:
                    return sorted(picked)
    return sorted(picked)


def raw_embedder_throughput(blobs: list[bytes], batch: int) -> dict:
    """Decode like the embed worker (draft, RGB), then `embed` in batches; each phase timed.
    When the embedder has `embed_gallery` (what the worker calls for gallery items; it may do
    more work than a query embedding, e.g. crop averaging), that is timed as well."""
    from django.conf import settings

    from gallery.embedders import get_embedder

    embedder = get_embedder()
    draft = (2 * settings.EMBEDDER_IMAGE_SIZE,) * 2
    t0 = time.perf_counter()
    pictures = []
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", draft)
            pictures.append(im.convert("RGB"))
    decode_s = time.perf_counter() - t0
    n = len(pictures)

    def timed(fn) -> float:
        fn(pictures[:batch])  # warm-up, not timed
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            fn(pictures[start : start + batch])
        return time.perf_counter() - t0

    embed_s = timed(embedder.embed)
    figures = {
        "embedder": embedder.name,
        "torch_threads": settings.TORCH_THREADS,
        "images": n,
        "batch": batch,
        "decode_seconds": round(decode_s, 3),
        "embed_seconds": round(embed_s, 3),
        "embed_images_per_s": round(n / embed_s, 1),
        "decode_embed_images_per_s": round(n / (decode_s + embed_s), 1),
    }
    if hasattr(embedder, "embed_gallery"):
        gallery_s = timed(embedder.embed_gallery)
        figures.update(
            embed_gallery_seconds=round(gallery_s, 3), embed_gallery_images_per_s=round(n / gallery_s, 1)
        )
    return figures


def upload_until_searchable(
    api: h.Api, data: bytes, name: str, *, poll: float, timeout: float
) -> dict | None:
    """None when the server already had these bytes (a duplicate)."""
    stem = PurePosixPath(name).stem
    t0 = time.perf_counter()
    status, body = api.upload(data, f"{stem}.jpg", title=f"upload {stem}", category="bench-upload")
    uploaded = time.perf_counter() - t0
    if status != 201:
        return None
    image_id, polls = body["id"], 0
    while time.perf_counter() - t0 < timeout:
        hits = [r["id"] for r in api.search(data, f"{stem}.jpg", k=10)["results"]]
        polls += 1
        if image_id in hits:
            return {
                "id": image_id,
                "name": name,
                "upload_s": uploaded,
                "searchable_s": time.perf_counter() - t0,
            }
        if polls % 20 == 0 and api.image(image_id)["status"] == "failed":
            raise RuntimeError(f"upload {name} (id {image_id}) failed to embed")
        time.sleep(poll)
    raise RuntimeError(f"upload {name} (id {image_id}) was not searchable after {timeout:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--limit", type=int, default=0, help="import only N test/ images (spread over classes)"
    )
    parser.add_argument(
        "--uploads", type=int, default=10, help="single uploads timed to searchable (default: 10)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="batch size of the raw embedder run (default: 32)"
    )
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between searches while waiting")
    parser.add_argument(
        "--upload-timeout", type=float, default=180, help="give up one upload after N seconds"
    )
    h.common_arguments(parser, redis_db=11)
    args = parser.parse_args(argv)
    h.install_signal_handlers()

    zip_path = h.require_dataset(args.datasets, DATASET)
    test_names = h.zip_image_names(zip_path, "test/")
    if not test_names:
        sys.exit(f"{zip_path} has no test/ images.")
    selected = pick_test_files(test_names, args.limit)
    train_names = h.zip_image_names(zip_path, "train/")
    candidates = random.Random(args.seed).sample(
        train_names, min(len(train_names), 3 * (args.uploads + 1) + 10)
    )
    with zipfile.ZipFile(zip_path) as zf:
        blobs = {name: zf.read(name) for name in selected}
        uploads = [(name, zf.read(name)) for name in candidates]
    h.log(f"{len(selected)} CIFAR-10 test/ images, {args.uploads} timed uploads from train/.")

    figures: dict = {}
    with h.BenchApp("import-throughput", args) as app:
        app.prepare()
        folder = app.tmp / "cifar-test"
        for name, data in blobs.items():
            parts = PurePosixPath(name).parts
            target = folder.joinpath(*parts[1:])  # <class>/<file>
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

        app.setup_django()
        h.log(f"Raw embedder on the same {len(blobs)} images (in-process, batches of {args.batch}) ...")
        raw = raw_embedder_throughput(list(blobs.values()), args.batch)
        figures["raw_embedder"] = raw
        h.log(
            f"  decode {raw['decode_seconds']:.2f} s, embed {raw['embed_seconds']:.2f} s: "
            f"{raw['embed_images_per_s']:.1f} img/s embedding, {raw['decode_embed_images_per_s']:.1f} img/s "
            "decode+embed"
        )
        if "embed_gallery_images_per_s" in raw:
            h.log(
                f"  embed_gallery (what the worker runs for gallery items): {raw['embed_gallery_seconds']:.2f} s, "
                f"{raw['embed_gallery_images_per_s']:.1f} img/s"
            )

        app.start()
        api = h.Api(app.base_url)
        pending = list(uploads)
        warm = None
        while warm is None and pending:  # warm-up: model loaded in the worker, index created
            name, data = pending.pop(0)
            warm = upload_until_searchable(api, data, name, poll=args.poll, timeout=args.upload_timeout)
        if warm is None:
            raise RuntimeError("no fresh image for the warm-up upload")
        h.log(f"Warm-up upload searchable after {warm['searchable_s']:.2f} s (not counted).")

        h.log(f"Importing {len(blobs)} images with import_images (until searchable) ...")
        imported = app.import_images(folder)
        processed = len(blobs) - imported.get("refused", 0)
        rate = processed / imported["seconds"]
        figures["import"] = {
            "files": len(blobs),
            "new": imported.get("new"),
            "duplicates": imported.get("duplicates"),
            "refused": imported.get("refused"),
            "failed": imported.get("failed"),
            "seconds": round(imported["seconds"], 2),
            "stored_seconds": round(imported["stored_seconds"], 2)
            if imported.get("stored_seconds")
            else None,
            "images_per_s": round(rate, 2),
            "store_images_per_s": round(processed / imported["stored_seconds"], 2)
            if imported.get("stored_seconds")
            else None,
        }
        figures["ratio_import_over_raw_embed"] = round(rate / raw["embed_images_per_s"], 3)
        figures["ratio_import_over_raw_decode_embed"] = round(rate / raw["decode_embed_images_per_s"], 3)
        if "embed_gallery_images_per_s" in raw:
            figures["ratio_import_over_raw_embed_gallery"] = round(
                rate / raw["embed_gallery_images_per_s"], 3
            )

        h.log(f"Timing {args.uploads} single uploads until searchable ...")
        timed = []
        while len(timed) < args.uploads and pending:
            name, data = pending.pop(0)
            result = upload_until_searchable(api, data, name, poll=args.poll, timeout=args.upload_timeout)
            if result is None:
                continue  # already in the gallery: not fresh
            timed.append(result)
            h.log(
                f"  {name}: upload request {result['upload_s'] * 1000:.0f} ms, searchable {result['searchable_s']:.2f} s"
            )
        api.close()
        # Server side, from the database: row created -> status indexed (no polling involved).
        from gallery.models import Image as Item

        stamps = {
            pk: (created, done)
            for pk, created, done in Item.objects.filter(pk__in=[r["id"] for r in timed]).values_list(
                "pk", "created_at", "indexed_at"
            )
        }
        for r in timed:
            created, done = stamps.get(r["id"], (None, None))
            r["indexed_s"] = (done - created).total_seconds() if created and done else None

    searchable = [r["searchable_s"] for r in timed]
    indexed = [r["indexed_s"] for r in timed if r["indexed_s"] is not None]
    figures["upload_to_searchable"] = {
        "uploads": len(timed),
        "median_s": round(statistics.median(searchable), 3) if searchable else None,
        "p90_s": round(h.percentile(searchable, 90), 3) if searchable else None,
        "max_s": round(max(searchable), 3) if searchable else None,
        "median_indexed_s": round(statistics.median(indexed), 3) if indexed else None,
        "median_upload_request_ms": round(statistics.median(r["upload_s"] for r in timed) * 1000, 1)
        if timed
        else None,
        "gallery_size": (imported.get("searchable") or 0) + 1,
        "poll_s": args.poll,
        "each_s": [round(s, 3) for s in searchable],
    }
    f, u = figures["import"], figures["upload_to_searchable"]
    h.log("\n=== Import throughput (CIFAR-10 test/) ===")
    h.log(
        f"import_images: {f['files']} files ({f['new']} new, {f['duplicates']} duplicates, {f['refused']} refused, "
        f"{f['failed']} failed) searchable after {f['seconds']:.1f} s => {f['images_per_s']:.1f} img/s"
    )
    if f["stored_seconds"]:
        h.log(
            f"  of which storing (decode, re-encode, thumbnail, DB): {f['stored_seconds']:.1f} s "
            f"({f['store_images_per_s']:.1f} img/s)"
        )
    h.log(
        f"Raw embedder: {raw['embed_images_per_s']:.1f} img/s (embed only), "
        f"{raw['decode_embed_images_per_s']:.1f} img/s (decode+embed), batches of {args.batch}"
    )
    if "embed_gallery_images_per_s" in raw:
        h.log(
            f"Raw embed_gallery (the worker's call for gallery items): {raw['embed_gallery_images_per_s']:.1f} img/s"
        )
    h.log(
        f"Ratio import / raw embed: {figures['ratio_import_over_raw_embed']:.2f} "
        f"(/ decode+embed: {figures['ratio_import_over_raw_decode_embed']:.2f})"
    )
    if "ratio_import_over_raw_embed_gallery" in figures:
        h.log(f"Ratio import / raw embed_gallery: {figures['ratio_import_over_raw_embed_gallery']:.2f}")
    if u["median_s"] is not None:
        h.log(
            f"Upload -> searchable ({u['uploads']} uploads into a {u['gallery_size']}-item gallery, polling every "
            f"{args.poll:.2f} s): median {u['median_s']:.2f} s, p90 {u['p90_s']:.2f} s, max {u['max_s']:.2f} s; "
            f"median row created -> indexed (database stamps) {u['median_indexed_s']} s"
        )

    params = {
        "limit": args.limit or None,
        "uploads": args.uploads,
        "batch": args.batch,
        "poll": args.poll,
        "seed": args.seed,
        "dataset": DATASET,
    }
    h.write_result(
        args.results,
        "import_throughput",
        params,
        figures,
        full_size=len(selected) == len(test_names) and args.uploads >= 10,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
