"""Latency of `POST /api/search` with a 1024x768 JPEG query: p50/p95/p99, mean, throughput.

Measured with 1, 8 and 16 concurrent clients (threads, one keep-alive connection each) against
(a) the 6,000-item fashion gallery (imported with `manage.py import_images`) and
(b) a 200,000-item index: the gallery (or, with --skip-gallery, one real image) plus synthetic
    items, i.e. `Image` rows written in bulk (status indexed, all pointing at one real stored
    file and thumbnail, with their `Embedding` rows) and random unit vectors of the embedder's
    dimension added to the app's index with gallery.index.VectorIndex under `write_lock`, saved
    while the app runs as a new generation (which the web process loads in the background, as
    after a rebuild; the searches made meanwhile are timed). One synthetic item (the probe)
    gets the query's own vector, so the run knows when the web process serves the new index.
After (a)'s levels, `--varied` searches by one client, each with another catalogue photo made
into a query the same way: latency over different queries, how often the photo's own item
comes first, and the web process's memory once many items' features are cached.
Then `--outside` searches, each with a photo that is not in the catalogue (a CIFAR-10 test/
photo upscaled to fill 1024x768): the latency of a query with no copy to find, which runs
every stage (regions, local features, pixels), with each stage's share.
Beside it, in the same run, the embedder alone: decode + embed of the same query in-process,
as the web process does it, so that the HTTP/search overhead shows as a ratio.

    .venv/bin/python bench/search_latency.py                       # full size
    .venv/bin/python bench/search_latency.py --limit 500 --synthetic 20000 --requests 50

Random vectors are a hard case for HNSW (no clusters), so (b) is pessimistic for the graph
search. Synthetic items have `Embedding` rows and hashes like real ones: without them the app's
backfill would embed them all again while the bench measures."""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import resource
import secrets
import sys
import time
import zipfile
from pathlib import Path

import harness as h
import numpy as np
from harness.pages import noisy_jpeg, page_jpeg
from harness.synthetic import synthetic_rows
from PIL import Image

FASHION = "fashion-products-6k.zip"
CIFAR = "cifar10-jpg.zip"
QUERY_SIZE = (1024, 768)
# Issue 16's bars: one client's p95; eight clients' throughput against one client's, and p95.
TARGET_P95_MS = 30.0
TARGET_SCALING_8 = 2.5
TARGET_P95_8_MS = 150.0


# --- the query -----------------------------------------------------------------------------------


def source_photo(datasets: Path, seed: int) -> tuple[bytes, str]:
    """A real small photo (fashion, else CIFAR-10), or a synthetic picture when neither is there."""
    rng = random.Random(seed)
    for name in (FASHION, CIFAR):
        path = Path(datasets) / name
        if path.is_file():
            names = h.zip_image_names(path)
            pick = rng.choice(names)
            with zipfile.ZipFile(path) as zf:
                return zf.read(pick), f"{name}:{pick}"
    im = Image.new("RGB", (240, 180), (200, 180, 160))
    for _ in range(12):
        x, y = rng.randrange(240), rng.randrange(180)
        box = (x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 90))
        im.paste(tuple(rng.randrange(256) for _ in range(3)), box)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), "synthetic"


def make_query(small: bytes, seed: int) -> bytes:
    """The photo fitted into 1024x768 on white (product photos have white backgrounds), with
    mild sensor-like noise so the JPEG is as costly to decode as a real photo; quality 90."""
    return page_jpeg(small, seed, QUERY_SIZE)


# --- in-process baseline ---------------------------------------------------------------------------


def embedder_baseline(query: bytes, reps: int) -> tuple[dict, np.ndarray, list[float]]:
    """Decode (with the same reduced-scale draft as a search) + embed, in this process.
    Returns the summary, the query's vector and the raw decode+embed durations."""
    from django.conf import settings

    from gallery.embedders import get_embedder
    from gallery.imaging import decode_image

    embedder = get_embedder()

    def decode():
        return decode_image(
            query,
            max_bytes=settings.UPLOAD_MAX_BYTES,
            max_pixels=settings.UPLOAD_MAX_PIXELS,
            draft_size=2 * settings.EMBEDDER_IMAGE_SIZE,
        ).image

    for _ in range(3):
        vector = embedder.embed([decode()])[0]
    dec, emb, tot = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        im = decode()
        t1 = time.perf_counter()
        embedder.embed([im])
        t2 = time.perf_counter()
        dec.append(t1 - t0)
        emb.append(t2 - t1)
        tot.append(t2 - t0)
    return (
        {
            "embedder": embedder.name,
            "dim": embedder.dim,
            "torch_threads": settings.TORCH_THREADS,
            "decode": h.summarize_ms(dec),
            "embed": h.summarize_ms(emb),
            "decode_embed": h.summarize_ms(tot),
        },
        vector,
        tot,
    )


# --- the synthetic index -----------------------------------------------------------------------------


def fill_synthetic(target: int, probe_vector: np.ndarray, template_bytes: bytes, seed: int) -> dict:
    """Grow the app's index (and the Image table) to `target` live items with synthetic ones.
    Holds the index's write lock, like the app's single writer."""
    from django.conf import settings

    from gallery import services
    from gallery.embedders import active_model, detail_model, embedder_identity
    from gallery.index import write_lock
    from gallery.models import Image as Item
    from gallery.selectors.index_journal import index_current

    model, dim = embedder_identity()
    directory = Path(settings.INDEX_DIR)
    figures = {}
    started = time.perf_counter()
    details_ref = detail_model()
    details_dir = details_ref.index_dir if details_ref else directory / "no-details"
    details_dir.mkdir(parents=True, exist_ok=True)
    with write_lock(directory), write_lock(details_dir):
        details = details_index(details_ref, target)
        index = index_current(directory)  # the snapshot and the journal after it
        if index is None:
            index = services.index_empty(active_model(), target)
        elif (index.meta.model, index.meta.dim) != (model, dim):
            raise RuntimeError(
                f"The index holds {index.meta.model}/{index.meta.dim}, the embedder is {model}/{dim}"
            )
        template = bench_template(index, template_bytes, model, dim)
        existing = len(index)
        n_new = max(0, target - existing)
        figures.update(real_items=existing, synthetic_items=n_new)
        if n_new == 0:
            h.log(f"The index already holds {existing} items (>= --synthetic {target}); nothing added.")
            return figures
        needed = index.hnsw.get_current_count() + n_new
        if needed > index.hnsw.get_max_elements():
            index.hnsw.resize_index(needed)
        h.log(
            f"Adding {n_new} synthetic items ({dim}-d random unit vectors) to the {existing}-item index ..."
        )
        rng = np.random.default_rng(seed)
        rows_s = index_s = 0.0
        done, probe_id, chunk = 0, None, 10000
        while done < n_new:
            m = min(chunk, n_new - done)
            t0 = time.perf_counter()
            vectors = rng.standard_normal((m, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if done == 0:
                vectors[0] = probe_vector
            views = detail_views(details_ref, vectors)
            codes = rng.integers(0, 256, size=(m, 32), dtype=np.uint8)  # unrelated random hashes
            ids = synthetic_rows(
                template, seed, done, vectors, codes, model, views=views, details_ref=details_ref
            )
            if done == 0:
                probe_id = ids[0]
                Item.objects.filter(pk=probe_id).update(title="bench probe")
            t1 = time.perf_counter()
            index.add(ids, vectors)
            if details is not None:
                details.add(ids, views)
            t2 = time.perf_counter()
            rows_s += t1 - t0
            index_s += t2 - t1
            done += m
            h.log(f"  {done}/{n_new}  (rows {done / rows_s:.0f}/s, HNSW inserts {done / index_s:.0f}/s)")
        t0 = time.perf_counter()
        save_new_generation(index, directory)
        if details is not None:
            save_new_generation(details, details_ref.index_dir)
        save_s = time.perf_counter() - t0
        total = len(index)
    del index
    gc.collect()
    figures.update(
        probe_id=probe_id,
        index_items=total,
        rows_seconds=round(rows_s, 2),
        hnsw_insert_seconds=round(index_s, 2),
        hnsw_inserts_per_s=round(n_new / index_s, 1) if index_s else None,
        save_seconds=round(save_s, 2),
        index_bytes=(directory / "index.bin").stat().st_size,
        total_seconds=round(time.perf_counter() - started, 2),
    )
    h.log(f"Index saved: {total} items, {figures['index_bytes'] / 2**20:.0f} MiB, {save_s:.1f} s to save.")
    return figures


def bench_template(index, template_bytes: bytes, model: str, dim: int):
    """The first indexed item, whose fields synthetic rows copy; with --skip-gallery, one real,
    searchable image made for it."""
    from django.conf import settings
    from django.utils import timezone

    from gallery import services
    from gallery.embedders import get_embedder
    from gallery.imaging import decode_image
    from gallery.models import Embedding
    from gallery.models import Image as Item

    template = Item.objects.filter(status=Item.Status.INDEXED).order_by("pk").first()
    if template is None:  # --skip-gallery: one real, searchable image to point the rows at
        template, _ = services.image_create(
            data=template_bytes,
            title="bench template",
            category="bench",
            original_name="template.jpg",
            enqueue=False,
        )
        decoded = decode_image(
            template_bytes, max_bytes=settings.UPLOAD_MAX_BYTES, max_pixels=settings.UPLOAD_MAX_PIXELS
        )
        vec = get_embedder().embed([decoded.image])[0]
        Embedding.objects.create(image=template, model_name=model, dim=dim, vector=vec.tobytes())
        Item.objects.filter(pk=template.pk).update(status=Item.Status.INDEXED, indexed_at=timezone.now())
        index.add([template.pk], vec[None, :])
    return template


def detail_views(ref, vectors: np.ndarray) -> np.ndarray | None:
    """The details of synthetic photos: each one's own detail view, once per view."""
    from gallery.embedders import get_embedder

    return None if ref is None else np.tile(get_embedder(ref).view_of(vectors), ref.views)


def save_new_generation(index, directory: Path) -> None:
    """Written behind the journal's back: a new generation, which every process loads."""
    index.meta.generation = secrets.randbits(62)
    index.meta.journal_floor = index.meta.journal_seq
    index.save(directory)


def details_index(ref, target: int):
    """The details index (`gallery.embedders.detail_model`) to grow beside the copy index."""
    from gallery import services
    from gallery.selectors.index_journal import index_current

    if ref is None:
        return None
    return index_current(ref.index_dir) or services.index_empty(ref, target)


def wait_for_probe(
    app: h.BenchApp, query: bytes, probe_id: int, timeout: float = 900
) -> tuple[float, list[float]]:
    """Until the web process answers with the new index (the probe among the results); also
    the latency of each search meanwhile (the web loads the new index in the background and
    answers from the old one: this says how much that slows searches)."""
    api = h.Api(app.base_url, timeout=timeout)
    started = time.perf_counter()
    latencies = []
    try:
        while time.perf_counter() - started < timeout:
            t0 = time.perf_counter()
            body = api.search(query, "query.jpg", k=10)
            latencies.append(time.perf_counter() - t0)
            if probe_id in [r["id"] for r in body["results"]]:
                return time.perf_counter() - started, latencies
            time.sleep(0.1)
    finally:
        api.close()
    raise RuntimeError(f"The web process did not serve the synthetic index within {timeout:.0f} s")


# --- load -----------------------------------------------------------------------------------------


def measure(app: h.BenchApp, query: bytes, *, clients: int, requests: int, warmup: int, k: int) -> dict:
    apis = [h.Api(app.base_url) for _ in range(clients)]

    def one(n: int):
        t0 = time.perf_counter()
        body = apis[n].search(query, "query.jpg", k=k)
        elapsed = time.perf_counter() - t0
        if not body["results"]:
            raise h.ApiError("no results")
        first = body["results"][0]
        return elapsed, body["took_ms"], body.get("stages_ms", {}), f"{first['id']}:{first.get('match')}"

    try:
        h.run_concurrent(clients, max(warmup, clients), one)  # warm-up: opens every connection
        cpu_before = cpu_now(app)
        results, wall = h.run_concurrent(clients, requests, one)
        cpu = cpu_spent(cpu_before, cpu_now(app), requests)
    finally:
        for api in apis:
            api.close()
    errors = [r for r in results if isinstance(r, Exception)]
    ok = [r for r in results if not isinstance(r, Exception)]
    figures = {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(ok) / wall, 2) if wall else None,
        "latency": h.summarize_ms([r[0] for r in ok]),
        "server_took": h.summarize_ms([r[1] / 1000 for r in ok]),
        "cpu_ms_per_request": cpu,
    }
    stages: dict[str, float] = {}
    for r in ok:
        for stage, ms in r[2].items():
            stages[stage] = stages.get(stage, 0.0) + ms / len(ok)
    figures["stages_mean_ms"] = {stage: round(ms, 2) for stage, ms in stages.items()}
    # The same query each time: a search that had to look at regions, or a first result that
    # changes, is the pipeline being unsure of it, not load.
    figures["region_searches"] = sum(1 for r in ok if "regions" in r[2])
    firsts: dict[str, int] = {}
    for r in ok:
        firsts[r[3]] = firsts.get(r[3], 0) + 1
    figures["first_results"] = firsts
    if errors:
        figures["first_error"] = repr(errors[0])[:300]
    return figures


def cpu_now(app: h.BenchApp) -> dict[str, float]:
    """CPU seconds so far: the web processes', this client process's, and the machine's busy
    and idle time (/proc/stat: every process, the workers and the database included)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    web = app.app_processes().get("web", [])
    return {
        "web": sum(h.proc_cpu_seconds(pid) or 0.0 for pid, _, _ in web),
        "client": usage.ru_utime + usage.ru_stime,
        "idle": (ticks[3] + ticks[4]) / tick,  # idle + iowait
        "busy": (sum(ticks[:8]) - ticks[3] - ticks[4]) / tick,
    }


def cpu_spent(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request by whom, and the cores left idle: one client's
    requests take a core each in turn, so eight clients can only beat it by the idle share
    and by doing less work per request."""
    spent = {k: after[k] - before[k] for k in before}
    figures = {k: round(spent[k] * 1000 / requests, 2) for k in ("web", "client", "busy")}
    figures["idle_share"] = round(spent["idle"] / max(spent["idle"] + spent["busy"], 1e-9), 3)
    return figures


def log_baseline(b: dict) -> None:
    h.log(f"  {b['embedder']} ({b['dim']}-d, {b['torch_threads']} torch threads)")
    h.log(f"  decode       {h.fmt_summary(b['decode'])}")
    h.log(f"  embed        {h.fmt_summary(b['embed'])}")
    h.log(f"  decode+embed {h.fmt_summary(b['decode_embed'])}")


def run_levels(app, query, args, label: str) -> dict:
    levels = {}
    for clients in args.clients:
        h.log(f"[{label}] {clients} client(s): {args.requests} requests after {args.warmup} warm-up ...")
        f = measure(app, query, clients=clients, requests=args.requests, warmup=args.warmup, k=args.k)
        levels[str(clients)] = f
        h.log(
            f"  {f['throughput_rps']:.1f} req/s, errors {f['errors']}; client {h.fmt_summary(f['latency'])}"
        )
        h.log(f"  server took_ms: {h.fmt_summary(f['server_took'])}")
        h.log(f"  CPU ms per request: {f['cpu_ms_per_request']}")
        sampled = h.MemorySampler(app).sample()
        f["resident_mib"] = {  # each role's processes, after the level (the web's: TORCH_FREE_QUERIES)
            role: round(v["rss_kb"] / 1024, 1) for role, v in sampled.items()
        }
        f["largest_process_mib"] = {role: round(v["largest_rss_kb"] / 1024, 1) for role, v in sampled.items()}
        h.log(f"  resident: {f['resident_mib']} MiB (largest process: {f['largest_process_mib']})")
        total = sum(f["stages_mean_ms"].values()) or 1.0
        h.log(
            "  stages (mean ms, share): "
            + ", ".join(f"{s} {ms:.1f} ({ms / total:.0%})" for s, ms in f["stages_mean_ms"].items())
        )
        h.log(f"  searched regions: {f['region_searches']} requests; first results: {f['first_results']}")
    return levels


def varied_queries(app, fashion: Path, names: list[str], count: int, seed: int, k: int) -> dict:
    """`count` searches from one client, each with another catalogue photo made into a query
    the same way: latency over different queries (the repeated one measures the machine),
    how often the photo's own item comes first, and the web processes' memory after (their
    caches filled with many items' local features, ONNX Runtime runs of many sizes)."""
    picks = random.Random(seed + 1).sample(names, min(count, len(names)))
    api = h.Api(app.base_url)
    latencies, first, regions = [], 0, 0
    try:
        with zipfile.ZipFile(fashion) as zf:
            for name in picks:
                query = make_query(zf.read(name), seed)
                t0 = time.perf_counter()
                body = api.search(query, "query.jpg", k=k)
                latencies.append(time.perf_counter() - t0)
                top = body["results"][0] if body["results"] else {}
                first += top.get("title") == Path(name).stem  # titles are the files' names
                regions += "regions" in body.get("stages_ms", {})
    finally:
        api.close()
    sampled = h.MemorySampler(app).sample()
    figures = {
        "queries": len(picks),
        "latency": h.summarize_ms(latencies),
        "first_is_its_item": round(first / len(picks), 4),
        "region_searches": regions,
        "resident_mib": {role: round(v["rss_kb"] / 1024, 1) for role, v in sampled.items()},
        "largest_process_mib": {role: round(v["largest_rss_kb"] / 1024, 1) for role, v in sampled.items()},
    }
    h.log(
        f"  {len(picks)} different photos: client {h.fmt_summary(figures['latency'])}; its item first "
        f"{figures['first_is_its_item']:.3f}; searched regions {regions}"
    )
    h.log(
        f"  resident after: {figures['resident_mib']} MiB (largest process: {figures['largest_process_mib']})"
    )
    return figures


def outside_queries(app, cifar: Path, count: int, seed: int, k: int) -> dict:
    """`count` searches from one client, each with a CIFAR-10 test/ photo upscaled to fill
    QUERY_SIZE (noise and quality as `make_query`): nothing in the gallery is a copy of them,
    so every stage runs. Latency, each stage's mean and share, and how many came back
    labelled a copy (none should)."""
    with zipfile.ZipFile(cifar) as zf:
        names = [n for n in zf.namelist() if n.startswith("test/") and n.endswith(".jpg")]
        picks = random.Random(seed + 2).sample(names, min(count, len(names)))
        photos = [zf.read(n) for n in picks]
    api = h.Api(app.base_url)
    latencies, labelled, stages = [], 0, {}
    try:
        for n, small in enumerate(photos):
            with Image.open(io.BytesIO(small)) as im:
                query = noisy_jpeg(im.convert("RGB").resize(QUERY_SIZE, Image.Resampling.BICUBIC), seed + n)
            t0 = time.perf_counter()
            body = api.search(query, "query.jpg", k=k)
            latencies.append(time.perf_counter() - t0)
            top = body["results"][0] if body["results"] else {}
            labelled += top.get("match") in ("exact", "near_duplicate")
            for stage, ms in body.get("stages_ms", {}).items():
                stages[stage] = stages.get(stage, 0.0) + ms / len(photos)
    finally:
        api.close()
    total = sum(stages.values()) or 1.0
    latency = h.summarize_ms(latencies)
    figures = {
        "queries": len(photos),
        "latency": latency,
        "labelled_copy": labelled,
        "stages_mean_ms": {s: round(ms, 1) for s, ms in stages.items()},
    }
    h.log(
        f"  {len(photos)} photos not in the catalogue: client {h.fmt_summary(latency)}; "
        f"labelled a copy {labelled}"
    )
    h.log(
        "  stages (mean ms, share): "
        + ", ".join(f"{s} {ms:.1f} ({ms / total:.0%})" for s, ms in stages.items())
    )
    return figures


def one_client_traces(app, fashion: Path, gallery_names: list[str], args: argparse.Namespace) -> dict:
    """After the levels: `--varied` catalogue photos, then `--outside` photos not in it."""
    traces = {}
    if args.varied:
        h.log(f"[gallery] {args.varied} searches by one client, each with another photo ...")
        traces["varied"] = varied_queries(app, fashion, gallery_names, args.varied, args.seed, args.k)
    cifar = Path(args.datasets) / CIFAR
    if args.outside and cifar.exists():
        h.log(f"[gallery] {args.outside} searches by one client with photos not in the catalogue ...")
        traces["outside"] = outside_queries(app, cifar, args.outside, args.seed, args.k)
    return traces


def report(label: str, items: int, levels: dict, baseline: dict) -> dict:
    base = baseline["decode_embed"]["p50_ms"]
    h.log(f"\n{label}: {items} items")
    h.log(
        f"  {'clients':>7} {'req/s':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'server p50':>11} {'p50/embed':>10}"
    )
    for c, f in levels.items():
        lat = f["latency"]
        h.log(
            f"  {c:>7} {f['throughput_rps']:>7.1f} {lat['p50_ms']:>8.1f} {lat['p95_ms']:>8.1f} "
            f"{lat['p99_ms']:>8.1f} {lat['mean_ms']:>8.1f} {f['server_took']['p50_ms']:>11.1f} "
            f"{lat['p50_ms'] / base:>9.2f}x"
        )
    one, eight = levels.get("1"), levels.get("8")
    verdicts = {}
    if one:
        verdicts[f"p95 <= {TARGET_P95_MS:.0f} ms with 1 client"] = (
            one["latency"]["p95_ms"] <= TARGET_P95_MS and not one["errors"]
        )
    if one and eight:
        scaling = eight["throughput_rps"] / max(one["throughput_rps"], 1e-9)
        verdicts[f"8 clients >= {TARGET_SCALING_8}x one client's req/s ({scaling:.2f}x)"] = (
            scaling >= TARGET_SCALING_8
        )
        verdicts[f"p95 <= {TARGET_P95_8_MS:.0f} ms with 8 clients"] = (
            eight["latency"]["p95_ms"] <= TARGET_P95_8_MS
        )
    for name, ok in verdicts.items():
        h.log(f"  {name}: {'PASS' if ok else 'FAIL'}")
    return {
        "items": items,
        "levels": levels,
        "verdicts": verdicts,
        "pass": all(verdicts.values()) if verdicts else None,
        "http_over_embed_p50": round(one["latency"]["p50_ms"] / base, 3) if one else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per client level")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up requests before each level")
    parser.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8, 16],
        help="concurrency levels, comma-separated (default: 1,8,16)",
    )
    parser.add_argument("--k", type=int, default=20, help="results per search (the API default: 20)")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=200_000,
        help="size of index (b), real items included; 0 skips (b) (default: %(default)s)",
    )
    parser.add_argument(
        "--varied",
        type=int,
        default=300,
        help="then N searches of (a) by one client, each with another catalogue photo (0 skips)",
    )
    parser.add_argument(
        "--outside",
        type=int,
        default=100,
        help="then N searches of (a) by one client with photos not in the catalogue (0 skips)",
    )
    parser.add_argument("--skip-gallery", action="store_true", help="skip (a): no fashion import")
    parser.add_argument(
        "--limit", type=int, default=0, help="import only N fashion photos for (a) (seeded sample)"
    )
    parser.add_argument("--baseline-reps", type=int, default=50, help="in-process decode+embed repetitions")
    h.common_arguments(parser, redis_db=10)
    args = parser.parse_args(argv)
    h.install_signal_handlers()
    if args.skip_gallery and not args.synthetic:
        parser.error("--skip-gallery with --synthetic 0 leaves nothing to measure")

    fashion = None if args.skip_gallery else h.require_dataset(args.datasets, FASHION)
    small, source = source_photo(args.datasets, args.seed)
    query = make_query(small, args.seed)
    h.log(
        f"Query: {QUERY_SIZE[0]}x{QUERY_SIZE[1]} JPEG q90, {len(query) / 1024:.0f} KiB, upscaled from {source}"
    )
    figures: dict = {"query_bytes": len(query), "query_source": source}

    with h.BenchApp("search-latency", args) as app:
        app.prepare()
        app.setup_django()
        h.log(f"Embedder alone (in-process decode + embed, {args.baseline_reps} reps) ...")
        before, query_vector, samples = embedder_baseline(query, args.baseline_reps)
        log_baseline(before)

        if fashion:
            names = h.zip_image_names(fashion)
            if 0 < args.limit < len(names):
                subset = sorted(random.Random(args.seed).sample(names, args.limit))
                src = h.write_subset_zip(fashion, subset, app.tmp / "gallery.zip")
                count = len(subset)
            else:
                src, count = fashion, len(names)
            app.start()
            h.log(f"(a) importing {count} fashion photos ...")
            imported = app.import_images(src)
            h.log(f"    {imported['seconds']:.1f} s until searchable")
            h.log(f"    then {app.wait_until_settled():.0f} s until the photos' features were kept")
            figures["gallery"] = {
                "import_seconds": round(imported["seconds"], 2),
                "imported": imported.get("new"),
                "levels": run_levels(app, query, args, "gallery"),
            }
            gallery_names = subset if 0 < args.limit < len(names) else names
            figures["gallery"] |= one_client_traces(app, fashion, gallery_names, args)
        if args.synthetic:
            if app.proc is None:  # --skip-gallery: build first, the web loads it at start-up
                synth = fill_synthetic(args.synthetic, query_vector, small, args.seed)
                app.start()
            else:
                synth = fill_synthetic(args.synthetic, query_vector, small, args.seed)
            if synth.get("probe_id"):
                waited, during = wait_for_probe(app, query, synth["probe_id"])
                synth["web_reload_seconds"] = round(waited, 2)
                synth["searches_during_reload"] = h.summarize_ms(during)
                h.log(f"  searches while it loaded: {h.fmt_summary(synth['searches_during_reload'])}")
                h.log(
                    f"The web process serves the {synth['index_items']}-item index ({waited:.1f} s after save)."
                )
            figures["synthetic"] = {"build": synth, "levels": run_levels(app, query, args, "synthetic")}

        # Again at the end, with the app idle: the two together say how steady the machine was.
        h.log(f"Embedder alone again, app idle ({args.baseline_reps} reps) ...")
        after, _, more = embedder_baseline(query, args.baseline_reps)
        log_baseline(after)
        baseline = {key: before[key] for key in ("embedder", "dim", "torch_threads")}
        baseline.update(decode_embed=h.summarize_ms(samples + more), first_pass=before, second_pass=after)
        figures["embedder_baseline"] = baseline

    h.log(f"\n=== Search latency, POST /api/search with a 1024x768 JPEG, k={args.k} ===")
    h.log(
        f"Embedder alone (decode+embed in-process, both passes): p50 {baseline['decode_embed']['p50_ms']:.1f} ms, "
        f"p95 {baseline['decode_embed']['p95_ms']:.1f} ms (first pass p50 "
        f"{before['decode_embed']['p50_ms']:.1f}, second {after['decode_embed']['p50_ms']:.1f})"
    )
    verdicts = []
    if "gallery" in figures:
        summary = report(
            "(a) fashion gallery", figures["gallery"]["imported"] or 0, figures["gallery"]["levels"], baseline
        )
        figures["gallery"].update(summary)
        verdicts.append(summary["pass"])
    if "synthetic" in figures:
        build = figures["synthetic"]["build"]
        items = build.get("index_items") or (build.get("real_items", 0) + build.get("synthetic_items", 0))
        summary = report(
            f"(b) synthetic index ({build.get('real_items')} real + {build.get('synthetic_items')} "
            "synthetic)",
            items,
            figures["synthetic"]["levels"],
            baseline,
        )
        figures["synthetic"].update(summary)
        verdicts.append(summary["pass"])
    figures["pass"] = all(v is True for v in verdicts) if verdicts else None
    h.log(f"Overall: {'PASS' if figures['pass'] else 'FAIL'} (issue 16's latency and concurrency bars)")

    params = {
        "requests": args.requests,
        "warmup": args.warmup,
        "clients": args.clients,
        "k": args.k,
        "synthetic": args.synthetic,
        "skip_gallery": args.skip_gallery,
        "limit": args.limit or None,
        "baseline_reps": args.baseline_reps,
        "varied": args.varied,
        "outside": args.outside,
        "seed": args.seed,
    }
    full = not args.skip_gallery and not args.limit and args.synthetic >= 200_000 and args.requests >= 300
    h.write_result(args.results, "search_latency", params, figures, full_size=full)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
