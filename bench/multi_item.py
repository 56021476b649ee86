#!/usr/bin/env python
"""Several catalogue photos in one picture, measured through the HTTP API: a shop's listing
page, a collage, two photos side by side, a desktop screenshot of a product page
(`harness/multi_pictures.py`).

Imports the 6,000 product photos of fashion-products-6k.zip except bench/robust.py's
held-back set (the same split for the same --seed), then asks `POST /api/search` (k=10) with
--per pictures of each kind and reports, per kind, of the photos the pictures hold:

- found: among the first n results (n: the photos in the picture);
- labelled: in the results labelled `exact` or `near_duplicate`;
- boxed: that result's `box` covers the photo (intersection over union at least 0.5);

and how many other items got a copy label (none should), the server's time per picture, and
the same kinds of pictures made of held-back photos only (none of their items is in the
gallery: every copy label there is wrong).

    .venv/bin/python bench/multi_item.py              # 30 pictures per kind
    .venv/bin/python bench/multi_item.py --per 5      # a quick look"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import PurePosixPath
from typing import Any

import harness as h
import robust
from harness import multi_pictures
from PIL import Image

COPY_TIERS = robust.COPY_TIERS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per", type=int, default=30, help="pictures per kind (default: 30)")
    parser.add_argument("--outside", type=int, default=10, help="pictures per kind of held-back photos only")
    parser.add_argument(
        "--negatives", type=int, default=250, help="product photos held back (robust.py's split)"
    )
    h.common_arguments(parser, redis_db=10)
    args = parser.parse_args(argv)
    args.limit = 0  # robust.load_catalogue reads it
    return args


def _photos(files: dict[str, bytes]) -> multi_pictures.Photos:
    return {PurePosixPath(n).stem: Image.open(io.BytesIO(d)).convert("RGB") for n, d in files.items()}


def _iou(a: list[int] | None, b: tuple[int, int, int, int]) -> float:
    if not a:
        return 0.0
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


def measure(api: h.Api, pictures: list[multi_pictures.Picture], same: dict[str, set[str]]) -> dict[str, Any]:
    counts: dict[str, dict[str, Any]] = {}
    for n, picture in enumerate(pictures):
        body = api.search(picture.data, f"{picture.kind}-{n}.jpg", k=10)
        results = body["results"]
        c = counts.setdefault(
            picture.kind,
            {"items": 0, "found": 0, "labelled": 0, "boxed": 0, "other_labelled": 0, "took_ms": []},
        )
        c["took_ms"].append(body["took_ms"])
        wanted: set[str] = set()
        for item in picture.items:
            good = same.get(item.stem, {item.stem})
            wanted |= good
            rank = next((i for i, r in enumerate(results) if r["title"] in good), None)
            hit = results[rank] if rank is not None else None
            c["items"] += 1
            c["found"] += rank is not None and rank < len(picture.items)
            c["labelled"] += hit is not None and hit["match"] in COPY_TIERS
            c["boxed"] += hit is not None and _iou(hit.get("box"), item.box) >= 0.5
        c["other_labelled"] += sum(r["match"] in COPY_TIERS and r["title"] not in wanted for r in results)
    figures = {}
    for kind, c in counts.items():
        took = c.pop("took_ms")
        items = max(1, c["items"])
        figures[kind] = {
            "items": c["items"],
            "found": round(c["found"] / items, 4),
            "labelled": round(c["labelled"] / items, 4),
            "boxed": round(c["boxed"] / items, 4),
            "other_labelled": c["other_labelled"],
            "took_ms": {"p50": round(h.percentile(took, 50), 1), "p95": round(h.percentile(took, 95), 1)},
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.install_signal_handlers()
    gallery, held_back = robust.load_catalogue(args)
    same = h.pixel_groups(gallery)
    rng = random.Random(args.seed + 21)
    inside, outside = _photos(gallery), _photos(held_back)
    kinds = list(multi_pictures.KINDS)
    pictures = [multi_pictures.make(kind, rng, inside) for kind in kinds for _ in range(args.per)]
    others = [multi_pictures.make(kind, rng, outside) for kind in kinds for _ in range(args.outside)]
    h.log(
        f"Gallery {len(gallery)} photos; {len(pictures)} pictures of {', '.join(kinds)}; {len(others)} of held-back photos."
    )
    with h.BenchApp("multi_item", args) as app:
        app.prepare()
        app.start()
        source = h.write_subset_zip(
            h.require_dataset(args.datasets, robust.DATASET), sorted(gallery), app.tmp / "gallery.zip"
        )
        app.import_images(source)
        h.log(f"    then {app.wait_until_settled():.0f} s until the photos' features were kept")
        api = h.Api(app.base_url)
        started = time.perf_counter()
        figures = measure(api, pictures, same)
        outside_figures = measure(api, others, {})
        api.close()
    h.log(f"Asked in {time.perf_counter() - started:.0f} s.")
    h.log(
        f"{'kind':<10}{'photos':>8}{'found':>8}{'labelled':>10}{'boxed':>8}{'others labelled':>17}{'p50 ms':>9}{'p95 ms':>9}"
    )
    for kind, f in figures.items():
        h.log(
            f"{kind:<10}{f['items']:>8}{f['found']:>8.2f}{f['labelled']:>10.2f}{f['boxed']:>8.2f}"
            f"{f['other_labelled']:>17}{f['took_ms']['p50']:>9.0f}{f['took_ms']['p95']:>9.0f}"
        )
    wrong = {kind: f["other_labelled"] for kind, f in outside_figures.items()}
    h.log(f"Pictures of held-back photos only ({args.outside} per kind): copy labels {wrong}")
    params = {"per": args.per, "outside": args.outside, "negatives": args.negatives, "seed": args.seed}
    h.write_result(
        args.results,
        "multi_item",
        params,
        {"kinds": figures, "held_back_pictures": outside_figures},
        full_size=args.per >= 30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
