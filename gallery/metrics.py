"""Prometheus metrics: request latency by endpoint (observed by `RequestMetricsMiddleware`) and
the figures read at scrape time (queue depths, images by status, the indexes this process
holds). With several web processes, set PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multi-process mode) so that every process's requests are counted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from .selectors import operations

REQUEST_SECONDS = Histogram(
    "gallery_request_seconds",
    "Time to answer a request, by endpoint (URL pattern), method and status class.",
    ["endpoint", "method", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class GalleryCollector(Collector):
    """Gauges read when Prometheus scrapes (a broker or database fault leaves its gauge out
    and the rest answer)."""

    def collect(self) -> Iterator[Metric]:
        try:
            depths = operations.queue_depths()
        except Exception:  # the broker is down: /readyz says so
            depths = {}
        queue = GaugeMetricFamily(
            "gallery_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
        )
        for name, depth in depths.items():
            queue.add_metric([name], depth)
        yield queue
        images = GaugeMetricFamily("gallery_images", "Images by status.", labels=["status"])
        for status, count in operations.image_status_counts().items():
            images.add_metric([status], count)
        yield images
        items = GaugeMetricFamily(
            "gallery_index_items", "Live items in this process's index.", labels=["model"]
        )
        version = GaugeMetricFamily(
            "gallery_index_snapshot_version", "Snapshots written of the index.", labels=["model"]
        )
        seq = GaugeMetricFamily(
            "gallery_index_journal_seq",
            "The last index journal change this process applied.",
            labels=["model"],
        )
        for figures in operations.index_figures():
            items.add_metric([figures.model], figures.items)
            version.add_metric([figures.model], figures.snapshot_version)
            seq.add_metric([figures.model], figures.journal_seq)
        yield from (items, version, seq)


_COLLECTOR = GalleryCollector()


def exposition() -> bytes:
    """The text Prometheus scrapes from this process (from every process in multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    registry.register(_COLLECTOR)
    return generate_latest(registry)


class _ProcessMetrics(Collector):
    """This process's own metrics (the request histogram) from the default registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class RequestMetricsMiddleware:
    """Times every request, labelled by its URL pattern (bounded: not the path with ids)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        endpoint = match.route if match is not None and match.route else "unmatched"
        REQUEST_SECONDS.labels(endpoint, request.method or "", f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started
        )
        return response
