"""Gunicorn settings for `manage.py runapp`. Threads share one copy of the model; ONNX Runtime
releases the GIL while it computes. The web embeds queries only: through the agreed ONNX graphs,
without importing torch (`TORCH_FREE_QUERIES`, unless the environment says otherwise)."""

import os

os.environ.setdefault("TORCH_FREE_QUERIES", "1")

workers = int(os.environ.get("WEB_WORKERS", 1))
threads = int(os.environ.get("WEB_THREADS", 8))
worker_class = "gthread"
timeout = 120
accesslog = os.environ.get("ACCESS_LOG") or None


def post_worker_init(worker):
    """Load the model and the index before the first request, not during it."""
    from PIL import Image

    from gallery.embedders import get_embedder
    from gallery.selectors import index_reader

    get_embedder().embed([Image.new("RGB", (64, 64))])
    try:
        index_reader().get()  # a bad index must not stop a worker: readers rebuild and retry
    except Exception:
        worker.log.exception("the index could not be loaded at start")
