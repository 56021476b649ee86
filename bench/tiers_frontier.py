#!/usr/bin/env python
"""Where the copy tiers' thresholds stand between edited copies and other items shot the same
way: the evidence `tiers.classify` sees, recorded once in-process, then classified again under
other `CopyThresholds` (`--set name=value`, each alone and all together).

1. A gallery of the 6,000 product photos minus a held-back set (split as bench/robust.py splits
   it with --gallery-seed) is imported through a throw-away app, which is then stopped.
2. In-process, against that gallery: edited copies of every kind (`--edit-seeds`, seeds other
   than bench/robust.py's, so its queries stay unseen) and the held-back products (other items,
   often the same model in the same pose in another colour) are searched; each candidate's
   `Evidence` is kept.
3. For each threshold setting: edited copies whose original would come first and labelled a
   copy (tuning kinds and held-out kinds apart), and held-back products that would get a copy
   label, with their names. Changing a threshold also changes which candidates the search
   verifies (it stops at a copy): confirm a setting with bench/robust.py.

It answers "does this threshold or this new evidence separate the two?" for many settings in
one run (about 10 minutes a split); bench/robust.py (through the HTTP API) stays the measure."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
from collections import Counter
from typing import Any

import harness as h
import robust
from harness import edits

DATASET = robust.DATASET


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gallery-seed", type=int, default=20241122, help="the split (bench/robust.py's --seed)"
    )
    parser.add_argument(
        "--edit-seeds", default="777,778", help="seeds of the edited copies (comma-separated)"
    )
    parser.add_argument("--per", type=int, default=2, help="edited copies per kind and strength and seed")
    parser.add_argument("--negatives", type=int, default=250, help="product photos held back")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a CopyThresholds field to try"
    )
    parser.add_argument("--dump", default="", help="also pickle the recorded evidence to this file")
    h.common_arguments(parser, redis_db=6)
    args = parser.parse_args(argv)
    args.limit, args.outside = 0, 1  # robust.load_catalogue / load_outside read these
    return args


def parse_settings(pairs: list[str]) -> dict[str, float]:
    from gallery.retrieval.tiers import CopyThresholds  # Django is set up by then

    fields = {f.name: f.type for f in dataclasses.fields(CopyThresholds)}
    settings: dict[str, float] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {pair}: CopyThresholds has no field {name!r}")
        settings[name] = int(value) if fields[name] in ("int", int) else float(value)
    return settings


def record_evidence(items: list[dict[str, Any]]) -> None:
    """Search each item's picture in-process; keep every candidate's evidence and its title."""
    from gallery.selectors import search_by_image  # Django is set up by then
    from gallery.selectors.search import index_readers_forget  # Django is set up by then

    recorded: dict[int, Any] = {}
    evidence_of = search_by_image._evidence

    def recording(c: Any, label: int, whole: Any, verification: Any) -> Any:
        e = evidence_of(c, label, whole, verification)
        recorded[label] = e
        return e

    search_by_image._evidence = recording  # a recorder around the app's own function, not a stand-in
    try:
        for n, item in enumerate(items, 1):
            recorded.clear()
            result = search_by_image.image_search_by_image(item["data"], k=10)
            titles = {hit.image.pk: hit.image.title for hit in result.hits}
            item["evidence"] = {pk: recorded[pk] for pk in titles if pk in recorded}
            item["titles"] = titles  # (in --dump: which photo each candidate is)
            item["target"] = next((pk for pk, t in titles.items() if t == item.get("stem")), None)
            if n % 100 == 0:
                h.log(f"  {n}/{len(items)} searched")
    finally:
        search_by_image._evidence = evidence_of
        index_readers_forget()  # stop following the journal of an app about to be removed


def classified(items: list[dict[str, Any]], negatives: list[dict[str, Any]], over: dict[str, float]) -> dict:
    from gallery.retrieval.tiers import (  # Django is set up by then
        COPY_TIERS,
        CopyThresholds,
        classify,
        contested,
    )

    def decided(evidence: dict[int, Any], t: CopyThresholds) -> dict[int, Any]:
        decisions = {pk: classify(e, t) for pk, e in evidence.items()}
        contested(decisions, evidence, t)
        return decisions

    t = dataclasses.replace(CopyThresholds(), **over)  # type: ignore[arg-type]
    first: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for q in items:
        group = "held_out" if q["kind"] in edits.HELD_OUT_KINDS else "tuning"
        counted[group] += 1
        decisions = decided(q["evidence"], t)
        copies = sorted(
            (pk for pk, d in decisions.items() if d.match in COPY_TIERS),
            key=lambda pk: -decisions[pk].strength,
        )
        first[group] += bool(copies) and copies[0] == q["target"]
    labelled = [
        q["name"] for q in negatives if any(d.match in COPY_TIERS for d in decided(q["evidence"], t).values())
    ]
    return {
        "labelled_first": {g: round(first[g] / counted[g], 4) for g in counted},
        "labelled_first_all": round(sum(first.values()) / max(1, sum(counted.values())), 4),
        "held_back_labelled": len(labelled),
        "held_back": len(negatives),
        "held_back_names": labelled,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.install_signal_handlers()
    split = argparse.Namespace(**{**vars(args), "seed": args.gallery_seed})
    gallery, held_back = robust.load_catalogue(split)
    backgrounds, _ = robust.load_outside(split)
    items = [
        q | {"seed": seed}
        for seed in (int(s) for s in args.edit_seeds.split(",") if s)
        for q in robust.make_queries(gallery, list(edits.KINDS), args.per, backgrounds, seed)
    ]
    negatives = [{"kind": "held_back", "name": name, "data": data} for name, data in held_back.items()]
    h.log(f"Gallery {len(gallery)} photos; {len(items)} edited copies; {len(negatives)} held back.")
    with h.BenchApp("tiers_frontier", args) as app:
        app.prepare()
        app.start()
        source = h.write_subset_zip(
            h.require_dataset(args.datasets, DATASET), sorted(gallery), app.tmp / "g.zip"
        )
        app.import_images(source)
        h.log(f"    then {app.wait_until_settled():.0f} s until the photos' features were kept")
        app.stop()
        app.setup_django()
        settings = parse_settings(args.set)
        record_evidence(items + negatives)
    if args.dump:
        with open(args.dump, "wb") as fh:
            pickle.dump({"items": items, "negatives": negatives}, fh)
    rows = {"as is": classified(items, negatives, {})}
    rows |= {f"{k}={v}": classified(items, negatives, {k: v}) for k, v in settings.items()}
    if len(settings) > 1:
        rows["all together"] = classified(items, negatives, settings)
    h.log(f"{'setting':<32}{'first (tuning)':>16}{'first (held out)':>18}{'held back labelled':>20}")
    for name, r in rows.items():
        lf = r["labelled_first"]
        h.log(
            f"{name:<32}{lf.get('tuning', 0):>16.3f}{lf.get('held_out', 0):>18.3f}"
            f"{r['held_back_labelled']:>12} of {r['held_back']}  {' '.join(r['held_back_names'])}"
        )
    params = {k: v for k, v in vars(args).items() if k not in ("datasets", "results")}
    h.write_result(
        args.results, "tiers_frontier", params, {"edited": len(items), "rows": rows}, full_size=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
