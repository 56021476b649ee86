"""Request-level limits, checked before Django reads a body (so a huge anonymous upload is
refused at once, not spooled to disk first)."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

# Room for the form fields and multipart framing around the largest accepted file.
FORM_OVERHEAD_BYTES = 1024 * 1024


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):,.0f} MB"


class BodySizeLimitMiddleware:
    """413 when the declared body is larger than any request of this caller may be: an image
    upload or search for everyone, an import archive for signed-in staff."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        staff = getattr(request, "user", None) is not None and request.user.is_staff
        limit = settings.IMPORT_MAX_TOTAL_BYTES if staff else settings.UPLOAD_MAX_BYTES + FORM_OVERHEAD_BYTES
        if length > limit:
            message = f"The request is too large ({_megabytes(length)}); the limit is {_megabytes(limit)}."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
