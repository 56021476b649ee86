"""Endpoints for operators and orchestrators: liveness, readiness, Prometheus metrics."""

import ipaddress
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from .metrics import exposition
from .selectors.operations import readiness
from .throttles import client_address


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process answers (no dependency is asked: a restart would not mend them)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """200 when the database, the broker and the index serve; 503 with what is wrong."""
    checks = readiness()
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
    )


def _may_scrape(request: HttpRequest) -> bool:
    """With METRICS_TOKEN set, its bearer; without, a loopback or private address only."""
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return secrets.compare_digest(given.encode(), settings.METRICS_TOKEN.encode())
    try:
        address = ipaddress.ip_address(client_address(request))
    except ValueError:
        return False
    return address.is_loopback or address.is_private


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
        return JsonResponse({"detail": "metrics are for the monitoring system"}, status=403)
    return HttpResponse(exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")
