"""Per-client rate limits of what visitors can do often (search, upload, search by address,
report): django-ninja's throttles on Django's cache (Redis when the app has it, so every web
process counts together). Staff are not limited. A cache that cannot be reached lets requests
through (and says so in the log) rather than taking the API down."""

import logging
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.throttling import AnonRateThrottle

logger = logging.getLogger(__name__)


class VisitorThrottle(AnonRateThrottle):
    """At most `THROTTLE_RATES[scope]` requests per client address; 429 with Retry-After."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__("1/s")  # the real rate is read from the settings for each request

    def get_cache_key(self, request: HttpRequest) -> str | None:
        user = getattr(request, "user", None)
        if self.rate is None or (user is not None and user.is_staff) or getattr(request, "auth", None):
            return None  # staff and API-token callers: not limited
        ident = self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"

    def allow_request(self, request: HttpRequest) -> bool:
        self.rate = settings.THROTTLE_RATES.get(self.scope)  # read each time: settings may change
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return bool(super().allow_request(request))
        except Exception:
            logger.exception("rate limit %s not checked (cache unreachable)", self.scope)
            return True


class AddressSearchThrottle(VisitorThrottle):
    """Searches by address cost a fetch from the internet: counted apart, only when `url` is given."""

    def allow_request(self, request: HttpRequest) -> bool:
        if not request.POST.get("url", "").strip():
            return True
        return super().allow_request(request)


def client_address(request: HttpRequest) -> str:
    """The visitor's address as the rate limits see it (the proxy's X-Forwarded-For entry
    when BEHIND_PROXY, else REMOTE_ADDR): one rule for every per-visitor count."""
    return VisitorThrottle("report").get_ident(request) or ""


def throttles(scope: str) -> list[Any]:
    if scope == "url":
        return [AddressSearchThrottle(scope)]
    return [VisitorThrottle(scope)]
