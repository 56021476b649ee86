"""What an operator (or an orchestrator, or Prometheus) asks of a running process: is it ready
to serve, and the figures to watch: queue depths, images by status, the indexes it holds."""

from __future__ import annotations

from dataclasses import dataclass

from amqp.exceptions import ChannelError
from celery import current_app
from django.db import connection
from django.db.models import Count

from ..embedders import active_model, served_models
from ..models import Image
from ..queues import ALL as QUEUES
from .search import index_reader


@dataclass
class IndexFigures:
    model: str
    items: int  # live items in this process's copy
    snapshot_version: int  # snapshots written so far (the one this copy started from, or later)
    journal_seq: int  # the last journal change applied
    generation: int


def queue_depth(queue: str, broker_url: str | None = None) -> int:
    """Messages waiting in one Celery queue. Raises when the broker cannot be asked (its
    connect and socket timeouts bound the wait)."""
    try:
        with current_app.connection_for_write(broker_url) as conn, conn.channel() as channel:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)  # type: ignore[attr-defined]
    except ChannelError:  # no such queue: Redis drops an empty list
        return 0


def queue_depths() -> dict[str, int]:
    """`queue_depth` of every queue of the app."""
    return {queue: queue_depth(queue) for queue in QUEUES}


def image_status_counts() -> dict[str, int]:
    """Every image by status (processing, indexed, failed, hidden)."""
    rows = Image.objects.values_list("status").annotate(n=Count("pk")).order_by()
    return {status: n for status, n in rows}


def index_figures() -> list[IndexFigures]:
    """The served indexes as this process holds them (loaded on first use)."""
    figures = []
    for ref in served_models(active_model()):
        index = index_reader(ref).get()
        if index is not None:
            meta = index.meta
            figures.append(
                IndexFigures(ref.name, len(index), meta.version, meta.journal_seq, meta.generation)
            )
    return figures


def readiness() -> dict[str, str]:
    """Each thing serving needs, "ok" or what is wrong: the database, the broker, the active
    model's index (loaded, or nothing to load yet)."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any driver error is a "not ready"
        checks["database"] = f"unreachable: {exc}"
        return checks | {"broker": "not checked", "index": "not checked"}
    try:
        queue_depths()
        checks["broker"] = "ok"
    except Exception as exc:  # connection refused, timeout, authentication...
        checks["broker"] = f"unreachable: {exc}"
    reader = index_reader(active_model())
    if reader.get() is not None:
        checks["index"] = "ok"
    elif Image.objects.searchable().exists():
        checks["index"] = f"not loaded: {reader.unusable or 'no index yet'}"
    else:
        checks["index"] = "ok"  # an empty gallery has nothing to load
    return checks
