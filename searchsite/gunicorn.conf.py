"""Gunicorn settings for `manage.py runapp`. Threads share one copy of the model; ONNX Runtime
releases the GIL while it computes. The web embeds queries only: through the agreed ONNX graphs,
without importing torch (`TORCH_FREE_QUERIES`, unless the environment says otherwise)."""

import os

os.environ.setdefault("TORCH_FREE_QUERIES", "1")
# NumPy's OpenBLAS threads spin after a product big enough to share (a compact index's re-rank,
# an exact scan) and take the cores from the next query's ONNX Runtime run: one client's search
# at a million items, p50 74.5 -> 32.7 ms with one BLAS thread (bench/scale.py --kept). Requests
# run side by side in threads and processes anyway.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Two processes: the web holds no torch now (about 500 MB each with a 6,000-item gallery), and
# a second process escapes the GIL: 8 clients 42.0 -> 60.7 req/s, p95 271 -> 199 ms, one
# client unchanged (bench/search_latency.py, 1,000 photos, the same hour).
workers = int(os.environ.get("WEB_WORKERS", 2))
threads = int(os.environ.get("WEB_THREADS", 8))
worker_class = "gthread"
timeout = 120
accesslog = os.environ.get("ACCESS_LOG") or None


def post_worker_init(worker):
    """Load the model and the index before the first request, not during it."""
    from PIL import Image

    from gallery.embedders import get_embedder
    from gallery.selectors import index_readers_warm

    get_embedder().embed([Image.new("RGB", (64, 64))])
    index_readers_warm()  # every served index, caught up: the first searches see every item


def child_exit(server, worker):
    """In multi-process metrics mode, a gone worker's live gauges go with it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
