"""Pages. Searching and uploading from the browser go through the JSON API (gallery/api.py)
from static/gallery/app.js; these views only render, and `media` hands out stored files
after the visibility check."""

import mimetypes

from django.conf import settings
from django.contrib import messages
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from . import selectors, services
from .throttles import client_address, throttles


def _max_upload_mb() -> int:
    return max(1, settings.UPLOAD_MAX_BYTES // (1024 * 1024))


def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "gallery/home.html",
        {
            "categories": selectors.category_list(),
            "max_upload_mb": _max_upload_mb(),
            "indexed_count": selectors.searchable_images().count(),
        },
    )


def browse(request: HttpRequest) -> HttpResponse:
    category = request.GET.get("category", "").strip()
    page = selectors.image_list(category=category, page=request.GET.get("page", 1))
    return render(
        request,
        "gallery/browse.html",
        {"page": page, "category": category, "categories": selectors.category_list()},
    )


def item(request: HttpRequest, pk: int) -> HttpResponse:
    image = selectors.image_get_for_viewer(pk, request.user)
    if image is None:
        raise Http404("No such image.")
    similar = (
        selectors.image_similar(image, k=settings.SEARCH_DEFAULT_K)
        if image.status == image.Status.INDEXED
        else None
    )
    return render(request, "gallery/item.html", {"image": image, "similar": similar})


@ensure_csrf_cookie  # the page's script sends it with the upload
def upload(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "gallery/upload.html",
        {"categories": selectors.category_list(), "max_upload_mb": _max_upload_mb()},
    )


@require_POST
def report(request: HttpRequest, pk: int) -> HttpResponse:
    """A visitor reports an item; it lands in the staff moderation queue."""
    image = selectors.image_get_searchable(pk)
    if image is None:
        raise Http404("No such image.")
    if not all(throttle.allow_request(request) for throttle in throttles("report")):
        messages.error(request, "Too many reports from your address; please try again later.")
        return redirect(image.get_absolute_url())
    try:
        reporter = services.visitor_key(request.user, client_address(request))
        services.report_create(image, request.POST.get("reason", ""), reporter)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Thank you: staff will look at this item.")
    return redirect(image.get_absolute_url())


def media(request: HttpRequest, path: str) -> HttpResponseBase:
    """A stored photo or thumbnail, to whoever may see its item (the public: approved and not
    hidden; staff: all); 404 otherwise, as for a file that does not exist. Behind nginx or
    Apache, MEDIA_ACCEL_REDIRECT / MEDIA_SENDFILE hand the sending to the front server."""
    image = selectors.image_media_for_viewer(path, request.user)
    if image is None or not default_storage.exists(path):
        raise Http404("No such file.")
    response: HttpResponseBase
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if settings.MEDIA_ACCEL_REDIRECT:
        response = HttpResponse(content_type=kind)
        response["X-Accel-Redirect"] = settings.MEDIA_ACCEL_REDIRECT.rstrip("/") + "/" + path
    elif settings.MEDIA_SENDFILE:
        response = HttpResponse(content_type=kind)
        response["X-Sendfile"] = default_storage.path(path)
    else:
        response = FileResponse(default_storage.open(path, "rb"), content_type=kind)
    # Public copies may be cached a little; what only staff see is never kept by a cache.
    response["Cache-Control"] = "public, max-age=300" if image.is_public else "private, no-store"
    return response
