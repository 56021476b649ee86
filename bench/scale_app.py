"""The app at a million items, measured through its HTTP API as users reach it (issue 15).

A throw-away app (`manage.py runapp`, SQLite, hnswlib, the default settings) is filled like this:

1. `--real` product photos imported with `manage.py import_images` (real files, vectors, hashes);
2. synthetic items up to `--items`: `Image` and `Embedding` rows written in bulk, their vectors
   mixed from the real ones (`harness.synthetic.Mixer`: they keep the real clusters and spread),
   their PDQ hashes the real item's with 24-64 bits flipped, their categories drawn so that
   `share-1`, `share-10` and `share-50` hold 1 %, 10 % and 50 % of the items;
3. `manage.py rebuild_index`, the app's own build (compact from `INDEX_COMPACT_MIN_ITEMS`).

Steps 2 and 3 run with the app stopped (its reconcile would index the rows as they are written);
it is started again on the result, and the time until it serves it is reported.

Then, through `POST /api/search` and `POST /api/images`:

- search latency with 1 and 8 clients (p50/p95/p99, req/s; the queries are real product photos
  of the gallery as a phone sends them, 768x1024 JPEGs), the server's own stages;
- filtered search (`category=`) for categories of 1 %, 10 % and 50 % of the items;
- upload -> searchable: fresh photos uploaded one after the other, each searched until found;
- searches while `--import-files` CIFAR-10 photos are imported (`import_images`): one client
  searching without pause, every latency kept: the slowest, p99, how many over 200 ms; the
  import's images/s; then upload -> searchable once more, and again while a second import
  (`--upload-import-files` photos) fills the workers' queues;
- memory: the proportional set size (PSS) of every app process by role, summed (a page shared
  by n processes, like the float16 vectors' mapped file, counts once), after loading and at
  the end of the import; the peak resident sizes by role, sampled every second;
- disk: the database, the index folder and the media.

    .venv/bin/python bench/scale_app.py --items 1000000            # about 25 minutes here
    .venv/bin/python bench/scale_app.py --items 20000 --real 500 --import-files 500 --requests 50
    .venv/bin/python bench/scale_app.py --kept /tmp/bench-scale-app-XXXX/var   # measure a kept gallery again

With `--kept` (a VAR_DIR kept by `--keep`) nothing is filled: the app starts on that gallery and
is measured again, with other CIFAR-10 photos (from `train/`) for the import and the uploads.

Targets (issue 15, a million items, hnswlib): one client's p95 <= 50 ms, upload -> searchable
<= 2 s, no search over 200 ms while an import runs, all processes together <= 12 GB."""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath

import harness as h
import numpy as np
from harness import edits_base
from harness.synthetic import Mixer, nearby_codes, synthetic_rows
from PIL import Image

PRODUCTS = "fashion-products-6k.zip"
CIFAR = "cifar10-jpg.zip"
SHARES = (("share-1", 0.01), ("share-10", 0.10), ("share-50", 0.50))
TARGET_P95_MS = 50.0
TARGET_SEARCHABLE_S = 2.0
TARGET_SLOWEST_DURING_IMPORT_MS = 200.0
TARGET_MEMORY_MIB = 12 * 1024


def phone_photo(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return edits_base.phone_photo(im)


def write_folder(folder: Path, zip_path: Path, names: list[str]) -> Path:
    """The files as `<class>/<name>` (the class becomes the category)."""
    with zipfile.ZipFile(zip_path) as zf:
        for name in names:
            parts = PurePosixPath(name).parts
            dest = folder / (parts[-2] if len(parts) > 1 else "photos") / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
    return folder


# --- filling ---------------------------------------------------------------------------------------


def real_items():
    """The imported items' vectors (the active model's) and hashes, and a template row."""
    from gallery.embedders import embedder_identity
    from gallery.models import Embedding
    from gallery.models import Image as Item

    model, _ = embedder_identity()
    rows = list(
        Embedding.objects.filter(model_name=model, image__status=Item.Status.INDEXED).values_list(
            "image_id", "vector", "image__pdq"
        )
    )
    vectors = np.stack([np.frombuffer(bytes(v), dtype=np.float32) for _, v, _ in rows])
    codes = np.stack([np.frombuffer(bytes(c), dtype=np.uint8) for _, _, c in rows])
    template = Item.objects.get(pk=rows[0][0])
    return model, vectors, codes, template


def probe_features(data: bytes) -> tuple[np.ndarray, bytes]:
    """The vector and the PDQ hash a search computes for this photo: a synthetic item holding
    them comes first, an exact copy, once the web serves the new index. (By the vector alone
    it may not: an item far from every other one can be left without a link into hnswlib's
    graph, and this probe is a CIFAR-10 photo among product photos.)"""
    from django.conf import settings

    from gallery.embedders import get_embedder
    from gallery.imaging import decode_image
    from gallery.retrieval.hashes import pdq_hash

    picture = decode_image(
        data,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        draft_size=2 * settings.EMBEDDER_IMAGE_SIZE,
    ).image
    return get_embedder().embed([picture])[0], pdq_hash(picture)[0]


def fill(args, probe: tuple[np.ndarray, bytes]) -> dict:
    """Synthetic rows up to --items; the first is the probe. Returns the probe's id and timings."""
    from gallery.embedders import detail_model
    from gallery.models import Image as Item

    if detail_model() is not None:
        raise SystemExit("COPY_DETAILS is on: this bench fills the default settings' rows only")
    model, real, real_codes, template = real_items()
    rng = np.random.default_rng(args.seed)
    mixer = Mixer.of(real)
    n_new, done, probe_id = args.items - len(real), 0, None
    started = time.perf_counter()
    h.log(f"Writing {n_new} synthetic items mixed from {len(real)} real ones ...")
    while done < n_new:
        m = min(10000, n_new - done)
        vectors, source = mixer.mix(m, rng)
        codes = nearby_codes(real_codes[source], int(rng.integers(24, 65)), rng)
        draw = rng.random(m)
        edges = np.cumsum([share for _, share in SHARES])
        names = [name for name, _ in SHARES] + ["share-rest"]
        categories = [names[k] for k in np.searchsorted(edges, draw, side="right")]
        if done == 0:
            vectors[0] = probe[0]
        ids = synthetic_rows(template, args.seed, done, vectors, codes, model, categories=categories)
        if done == 0:
            probe_id = ids[0]
            Item.objects.filter(pk=probe_id).update(title="bench probe", category="probe", pdq=probe[1])
        done += m
        if done % 100000 < m or done == n_new:
            rate = done / (time.perf_counter() - started)
            h.log(f"  {done}/{n_new} rows ({rate:.0f}/s)")
    return {"probe_id": probe_id, "rows_seconds": round(time.perf_counter() - started, 1), "real": len(real)}


def wait_for_probe(app: h.BenchApp, photo: bytes, probe_id: int, timeout: float = 1800) -> float:
    """Until every web process answers from the new index: the probe first in 8 searches in a
    row, each on a new connection (a kept-alive one stays with one process)."""
    started, in_a_row, tries = time.perf_counter(), 0, 0
    while time.perf_counter() - started < timeout:
        api = h.Api(app.base_url, timeout=120)
        try:
            results = api.search(photo, "probe.jpg", k=5)["results"]
        except (h.ApiError, OSError):  # a starting app: not answering yet
            results = []
        finally:
            api.close()
        in_a_row = in_a_row + 1 if results and results[0]["id"] == probe_id else 0
        if not in_a_row and tries % 10 == 0:
            first = {k: results[0].get(k) for k in ("id", "score", "match")} if results else None
            h.log(f"  waiting for the new index: the first result is {first}, the probe is {probe_id}")
        tries += 1
        if in_a_row >= 8:
            return time.perf_counter() - started
        time.sleep(0.5 if in_a_row else 2)
    raise RuntimeError(f"The web did not serve the new index within {timeout:.0f} s")


def wait_until_served(app: h.BenchApp, queries: list[bytes], timeout: float = 600) -> float:
    """A started app on a kept gallery: until searches answer from the loaded index (a process
    loading it answers from the database's scan meanwhile) in 8 searches in a row."""
    started, in_a_row = time.perf_counter(), 0
    while in_a_row < 8:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"The web did not load the kept index within {timeout:.0f} s")
        api = h.Api(app.base_url, timeout=120)
        try:
            t0 = time.perf_counter()
            api.search(queries[in_a_row], "query.jpg", k=10)
            fast = time.perf_counter() - t0 < 0.5
        except (h.ApiError, OSError):  # not answering yet
            fast = False
        finally:
            api.close()
        in_a_row = in_a_row + 1 if fast else 0
        time.sleep(0.2)
    return time.perf_counter() - started


def settle(app: h.BenchApp, timeout: float = 1800) -> None:
    """Until the kept gallery has no image left processing (a run stopped during its import
    leaves some, which the app's recovery takes up at its start)."""
    app.setup_django()
    from gallery.models import Image as Item

    started = time.perf_counter()
    while (waiting := Item.objects.processing().count()) and time.perf_counter() - started < timeout:
        h.log(f"  {waiting} images still processing ...")
        time.sleep(10)


# --- measuring -------------------------------------------------------------------------------------


def searches(
    app: h.BenchApp, queries: list[bytes], *, clients: int, requests: int, category: str = ""
) -> dict:
    apis = [h.Api(app.base_url) for _ in range(clients)]
    turn = iter(range(10**9))

    def one(n: int):
        data = queries[next(turn) % len(queries)]
        t0 = time.perf_counter()
        body = apis[n].search(data, "query.jpg", k=10, category=category)
        return time.perf_counter() - t0, body.get("stages_ms", {})

    try:
        h.run_concurrent(clients, 2 * clients, one)  # opens every connection
        results, wall = h.run_concurrent(clients, requests, one)
    finally:
        for api in apis:
            api.close()
    ok = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    stages: dict[str, float] = {}
    for _, st in ok:
        for stage, ms in st.items():
            stages[stage] = stages.get(stage, 0.0) + ms / len(ok)
    out = {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "throughput_rps": round(len(ok) / wall, 2),
        "latency": h.summarize_ms([r[0] for r in ok]),
        "stages_mean_ms": {k: round(v, 2) for k, v in stages.items()},
    }
    if errors:
        out["first_error"] = repr(errors[0])[:300]
    return out


def uploads_until_searchable(app: h.BenchApp, photos: list[tuple[str, bytes]]) -> dict:
    api = h.Api(app.base_url)
    times = []
    try:
        for name, data in photos:
            r = h.upload_until_searchable(api, data, name, poll=0.05, timeout=120)
            if r is not None:
                times.append(r["searchable_s"])
                h.log(f"  {name}: searchable after {r['searchable_s']:.2f} s")
    finally:
        api.close()
    return {
        "uploads": len(times),
        "median_s": round(float(np.median(times)), 3),
        "max_s": round(max(times), 3),
        "each_s": [round(t, 3) for t in times],
    }


def searches_during_import(app: h.BenchApp, folder: Path, queries: list[bytes]) -> dict:
    """One client searching without pause while `import_images` runs."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome.update(app.import_images(folder))
        except Exception as exc:  # reported, the searches stop
            outcome["error"] = repr(exc)[:500]

    thread = threading.Thread(target=run, daemon=True)
    api = h.Api(app.base_url)
    latencies, errors, slow = [], 0, []
    thread.start()
    try:
        while thread.is_alive():
            t0 = time.perf_counter()
            try:
                body = api.search(queries[len(latencies) % len(queries)], "query.jpg", k=10)
                latencies.append(time.perf_counter() - t0)
                if latencies[-1] > TARGET_SLOWEST_DURING_IMPORT_MS / 2000:
                    # where a slow one's time went (server stages; the rest is the network
                    # and the web server's queue)
                    slow.append({"ms": round(1000 * latencies[-1], 1), **body.get("stages_ms", {})})
            except h.ApiError:
                errors += 1
    finally:
        api.close()
        thread.join()
    if "error" in outcome:
        raise RuntimeError(f"The import failed: {outcome['error']}")
    ms = sorted(1000 * t for t in latencies)
    return {
        "searches": len(ms),
        "errors": errors,
        "latency": h.summarize_ms(latencies),
        "slowest_ms": round(ms[-1], 1),
        "over_200ms": sum(1 for t in ms if t > TARGET_SLOWEST_DURING_IMPORT_MS),
        "slowest_5_ms": [round(t, 1) for t in ms[-5:]],
        "slowest_5_stages_ms": sorted(slow, key=lambda s: s["ms"])[-5:],
        "import_images": outcome.get("new"),
        "import_seconds": round(outcome["seconds"], 1),
        "import_per_s": round((outcome.get("new") or 0) / outcome["seconds"], 1),
    }


def uploads_during_import(app: h.BenchApp, folder: Path, photos: list[tuple[str, bytes]]) -> dict:
    """Uploads timed until searchable, one after the other, while `import_images` runs: the
    import's batches fill the workers' bulk queues; a visitor's upload must not wait behind
    them. Only uploads that became searchable before the import ended count."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome.update(app.import_images(folder))
        except Exception as exc:  # reported
            outcome["error"] = repr(exc)[:500]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(8)  # the import's files are listed and its batches queued
    api = h.Api(app.base_url)
    times, ids, requests = [], [], []
    try:
        for name, data in photos:
            if not thread.is_alive():
                break
            r = h.upload_until_searchable(api, data, name, poll=0.05, timeout=600)
            if r is not None and thread.is_alive():
                times.append(r["searchable_s"])
                ids.append(r["id"])
                requests.append(round(r["upload_s"], 3))
                h.log(f"  {name}: searchable after {r['searchable_s']:.2f} s (the import runs)")
            time.sleep(2)
    finally:
        api.close()
        thread.join()
    if "error" in outcome:
        raise RuntimeError(f"The import failed: {outcome['error']}")
    return {
        "uploads": len(times),
        "median_s": round(float(np.median(times)), 3) if times else None,
        "max_s": round(max(times), 3) if times else None,
        "each_s": [round(t, 3) for t in times],
        "each_upload_request_s": requests,
        "each_stamps_s": server_stamps(ids),
        "import_images": outcome.get("new"),
        "import_seconds": round(outcome["seconds"], 1),
    }


def server_stamps(ids: list[int]) -> list[dict]:
    """Each upload's way through the server, from the database's stamps (seconds after its row
    was created): its vector stored (embed worker), its status indexed (index writer). The rest
    of its time until searchable is the web processes catching up with the journal."""
    from gallery.models import Embedding
    from gallery.models import Image as Item

    rows = {pk: created for pk, created in Item.objects.filter(pk__in=ids).values_list("pk", "created_at")}
    indexed = dict(Item.objects.filter(pk__in=ids).values_list("pk", "indexed_at"))
    embedded: dict[int, object] = {}
    for pk, at in Embedding.objects.filter(image_id__in=ids).values_list("image_id", "created_at"):
        embedded[pk] = min(at, embedded.get(pk, at))  # type: ignore[type-var]

    def since(pk: int, at) -> float | None:
        return round((at - rows[pk]).total_seconds(), 3) if at and pk in rows else None

    return [{"embedded": since(pk, embedded.get(pk)), "indexed": since(pk, indexed.get(pk))} for pk in ids]


def disk_mib(var_dir: Path) -> dict:
    def size(path: Path) -> float:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return round(sum(p.stat().st_size for p in files) / 2**20, 1)

    return {
        "database": round(sum(size(p) for p in var_dir.glob("db.sqlite3*")), 1),
        "index": size(var_dir / "index") if (var_dir / "index").exists() else 0.0,
        "media": size(var_dir / "media") if (var_dir / "media").exists() else 0.0,
    }


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_arguments(p, redis_db=13)
    p.add_argument("--items", type=int, default=1_000_000, help="items in the gallery")
    p.add_argument("--real", type=int, default=2000, help="product photos imported for real")
    p.add_argument("--requests", type=int, default=200, help="searches per measurement")
    p.add_argument("--uploads", type=int, default=10, help="uploads timed until searchable")
    p.add_argument("--import-files", type=int, default=10000, help="CIFAR-10 photos imported under load")
    p.add_argument(
        "--upload-import-files",
        type=int,
        default=3000,
        help="CIFAR-10 photos imported while uploads are timed",
    )
    p.add_argument("--kept", type=Path, help="a VAR_DIR kept by --keep: measure it again, without filling")
    return p.parse_args(argv)


def build_gallery(
    app: h.BenchApp, args, products: Path, real_names: list[str], probe_photo: bytes, figures: dict
) -> h.MemorySampler:
    """A fresh app filled to --items: real photos imported through the running app; then, with
    the app stopped (its reconcile would otherwise index the rows as they are written, building
    the index again and again), the synthetic rows and the index built; then the app started."""
    app.prepare()
    app.start()
    h.log(f"Importing {len(real_names)} product photos ...")
    real_dir = write_folder(app.tmp / "real", products, real_names)
    figures["real_import_seconds"] = round(app.import_images(real_dir)["seconds"], 1)
    app.stop()
    app.setup_django()
    figures["fill"] = fill(args, probe_features(probe_photo))
    h.log("Building the index (manage.py rebuild_index) ...")
    t0 = time.perf_counter()
    app.run_manage(["rebuild_index"])
    figures["build_seconds"] = round(time.perf_counter() - t0, 1)
    app.flush_redis()  # the rebuild's requests for the stopped workers
    t0 = time.perf_counter()
    app.start()
    sampler = h.MemorySampler(app, interval=1.0).start()
    wait_for_probe(app, probe_photo, figures["fill"]["probe_id"])
    figures["started_seconds"] = round(time.perf_counter() - t0, 1)
    h.log(
        f"Built in {figures['build_seconds']} s; the app served it {figures['started_seconds']} s after its start."
    )
    return sampler


def main(argv=None) -> int:
    args = parse_args(argv)
    h.install_signal_handlers()
    products = h.require_dataset(args.datasets, PRODUCTS)
    cifar = h.require_dataset(args.datasets, CIFAR)
    rnd = random.Random(args.seed)
    product_names = h.zip_image_names(products)
    real_names = sorted(rnd.sample(product_names, args.real))
    train, test = h.zip_image_names(cifar, "train/"), h.zip_image_names(cifar, "test/")
    import_names = sorted(rnd.sample(test, min(args.import_files, len(test))))
    upload_names = rnd.sample(train, 3 * args.uploads + 1)
    if args.kept:  # photos the kept gallery has not had (it holds the test/ ones and a few train/)
        other = random.Random(time.time_ns())
        import_names = sorted(other.sample(train, args.import_files))
        upload_names = other.sample(sorted(set(train) - set(import_names)), 3 * args.uploads)
    # The second import (uploads timed meanwhile): photos neither the gallery nor the first has.
    second_import_names = sorted(
        random.Random(args.seed + 1).sample(
            sorted(set(train) - set(import_names) - set(upload_names)), args.upload_import_files
        )
    )
    with zipfile.ZipFile(products) as zf:
        queries = [phone_photo(zf.read(n)) for n in rnd.sample(real_names, min(100, len(real_names)))]
    with zipfile.ZipFile(cifar) as zf:
        fresh = [(n, zf.read(n)) for n in upload_names]
    figures: dict = {}
    with h.BenchApp("scale-app", args) as app:
        if args.kept:
            app.var_dir = args.kept
            app.env = app._build_env()
            app.flush_redis()
            app.start()
            sampler = h.MemorySampler(app, interval=1.0).start()
            figures["started_seconds"] = round(wait_until_served(app, queries), 1)
            settle(app)
        else:
            sampler = build_gallery(app, args, products, real_names, phone_photo(fresh.pop()[1]), figures)
        figures["disk_mib"] = disk_mib(app.var_dir)
        figures["memory_loaded_pss_mib"] = h.pss_by_role(app)
        h.log(f"Memory (PSS, MiB): {figures['memory_loaded_pss_mib']}   disk (MiB): {figures['disk_mib']}")
        for clients in (1, 8):
            r = searches(app, queries, clients=clients, requests=args.requests)
            figures[f"search_{clients}_clients"] = r
            h.log(
                f"{clients} client(s): {h.fmt_summary(r['latency'])}  {r['throughput_rps']} req/s  {r['stages_mean_ms']}"
            )
        figures["filtered"] = {}
        for name, share in SHARES:
            r = searches(app, queries, clients=1, requests=max(20, args.requests // 2), category=name)
            figures["filtered"][name] = r
            h.log(f"category of {share:.0%}: {h.fmt_summary(r['latency'])}")
        h.log(f"Timing {args.uploads} uploads until searchable ...")
        figures["upload_searchable"] = uploads_until_searchable(app, fresh[: args.uploads])
        h.log(f"Importing {len(import_names)} CIFAR-10 photos while one client searches ...")
        import_dir = write_folder(app.tmp / "import", cifar, import_names)
        figures["during_import"] = r = searches_during_import(app, import_dir, queries)
        h.log(
            f"  {r['searches']} searches: {h.fmt_summary(r['latency'])}, slowest {r['slowest_ms']} ms, "
            f"{r['over_200ms']} over 200 ms; import {r['import_per_s']} img/s"
        )
        figures["memory_after_import_pss_mib"] = h.pss_by_role(app)
        h.log(f"Memory after the import (PSS, MiB): {figures['memory_after_import_pss_mib']}")
        figures["upload_searchable_after_import"] = uploads_until_searchable(
            app, fresh[args.uploads : 2 * args.uploads]
        )
        h.log(f"Importing {len(second_import_names)} more photos while uploads are timed ...")
        second_dir = write_folder(app.tmp / "import2", cifar, second_import_names)
        figures["upload_searchable_during_import"] = uploads_during_import(
            app, second_dir, fresh[2 * args.uploads :]
        )
        shutil.rmtree(second_dir, ignore_errors=True)
        sampler.sample()
        sampler.stop()
        figures["memory_peaks"] = sampler.summary()
        shutil.rmtree(app.tmp / "real", ignore_errors=True)
        shutil.rmtree(import_dir, ignore_errors=True)
    figures["targets"] = verdicts(figures)
    for name, ok in figures["targets"].items():
        h.log(f"  {name}: {'PASS' if ok else 'FAIL'}")
    params = {
        k: getattr(args, k)
        for k in ("items", "real", "requests", "uploads", "import_files", "upload_import_files", "seed")
    }
    params["kept"] = bool(args.kept)
    h.write_result(args.results, "scale_app", params, figures, full_size=args.items >= 1_000_000)
    return 0


def verdicts(f: dict) -> dict[str, bool]:
    peak = max(f["memory_loaded_pss_mib"]["total"], f["memory_after_import_pss_mib"]["total"])
    return {
        "one client p95 <= 50 ms": f["search_1_clients"]["latency"]["p95_ms"] <= TARGET_P95_MS,
        "upload -> searchable <= 2 s (before, during and after an import)": max(
            f["upload_searchable"]["max_s"],
            f["upload_searchable_after_import"]["max_s"],
            f["upload_searchable_during_import"]["max_s"] or float("inf"),
        )
        <= TARGET_SEARCHABLE_S,
        "no search over 200 ms during the import": f["during_import"]["over_200ms"] == 0,
        "all processes <= 12 GB": peak <= TARGET_MEMORY_MIB,
    }


if __name__ == "__main__":
    sys.exit(main())
