"""The JSON API (django-ninja): thin, parses input and calls services and selectors.
Errors are always `{"error": "<words a person understands>"}`; every answer's shape is
declared in `schemas`."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import File, Form, NinjaAPI, Status
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.files import UploadedFile
from ninja.security import HttpBearer, django_auth
from ninja.utils import check_csrf

from . import selectors, services
from .imaging import ImageRejected
from .models import Image
from .schemas import (
    ErrorOut,
    ImageCreatedOut,
    ImageDetailOut,
    ImageStatusOut,
    ModerationOut,
    ReportOut,
    SearchOut,
)
from .throttles import client_address, throttles

api = NinjaAPI(title="Search by image", version="1", urls_namespace="api")

BAD_INPUT = {400: ErrorOut}
NOT_FOUND = {404: ErrorOut}
TOO_MANY = {429: ErrorOut}


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = sorted({str(err.get("loc", ["?"])[-1]) for err in exc.errors})
    missing = [f for f in fields if f == "image"]
    message = (
        "Please attach an image file (form field 'image') or give its address (form field 'url')."
        if missing
        else f"Invalid value for: {', '.join(fields)}."
    )
    return api.create_response(request, {"error": message}, status=400)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc)
    if isinstance(exc, Throttled):
        wait = f"{exc.wait:.0f} seconds" if exc.wait is not None else "a moment"
        message = f"Too many requests from your address; please try again in {wait}."
    return api.create_response(request, {"error": message}, status=exc.status_code)


@api.exception_handler(AuthenticationError)
def _not_authenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request,
        {"error": "Please sign in as staff, or send an API token (Authorization: Bearer <key>)."},
        status=401,
    )


@api.exception_handler(ImageRejected)
def _image_rejected(request: HttpRequest, exc: ImageRejected) -> HttpResponse:
    return api.create_response(request, {"error": str(exc)}, status=400)


def read_upload(upload: UploadedFile) -> bytes:
    """Refuse oversized files before reading them into memory."""
    if upload.size is not None and upload.size > settings.UPLOAD_MAX_BYTES:
        raise ImageRejected(
            f"The file is too large ({upload.size / (1024 * 1024):.0f} MB); the limit is "
            f"{settings.UPLOAD_MAX_BYTES / (1024 * 1024):.0f} MB."
        )
    return bytes(upload.read())


def image_summary(request: HttpRequest, image: Image) -> dict[str, Any]:
    return {
        "id": image.pk,
        "title": image.title,
        "category": image.category,
        "url": request.build_absolute_uri(image.get_absolute_url()),
        "image_url": request.build_absolute_uri(image.file.url),
        "thumbnail_url": request.build_absolute_uri(image.thumbnail.url),
    }


def results_payload(request: HttpRequest, result: selectors.SearchResult) -> dict[str, Any]:
    return {
        "results": [
            {
                "id": hit.image.pk,
                "score": round(hit.score, 6),
                "match": hit.match,
                "explanation": hit.explanation,
                "box": hit.box.as_list() if hit.box else None,
                **image_summary(request, hit.image),
            }
            for hit in result.hits
        ],
        "regions": [{"box": r.box.as_list(), "score": round(r.score, 4)} for r in result.regions],
        "took_ms": round(result.took_ms, 2),
        "stages_ms": result.stages_ms,
    }


@api.post(
    "/search",
    response={200: SearchOut, **BAD_INPUT, **TOO_MANY},
    throttle=throttles("search") + throttles("url"),
)
def search(
    request: HttpRequest,
    image: File[UploadedFile | None] = None,
    url: Form[str] = "",
    k: Form[int] = 20,
    category: Form[str] = "",
    box: Form[str] = "",
) -> dict[str, Any]:
    """The items found in the uploaded photo (`image`), or in the image at an http(s) address
    (`url`, fetched by the server: public addresses only, at most 3 redirects, the upload's
    size limit): copies of it first (`match` exact or near_duplicate, with an `explanation`),
    then look-alikes. `box=x,y,w,h` (pixels of the image) searches only that part; `regions`
    suggests where items may be."""
    url = url.strip()
    if image is None and not url:
        raise HttpError(
            400, "Please attach an image file (form field 'image') or give its address (form field 'url')."
        )
    if image is not None and url:
        raise HttpError(
            400,
            "Please give either an image file (form field 'image') or an address (form field 'url'), not both.",
        )
    try:
        data = read_upload(image) if image is not None else services.image_fetch_from_url(url)
        result = selectors.image_search_by_image(data, k=k, category=category.strip(), box=box.strip())
    except ValueError as exc:
        if isinstance(exc, ImageRejected):
            raise
        raise HttpError(400, str(exc)) from exc
    return results_payload(request, result)


@api.get("/images/{image_id}/similar", response={200: SearchOut, **NOT_FOUND})
def similar(request: HttpRequest, image_id: int, k: int = 20) -> dict[str, Any]:
    """The items most similar to a searchable item, without the item itself."""
    image = selectors.image_get_searchable(image_id)
    if image is None:
        raise HttpError(404, "No searchable image with this id.")
    return results_payload(request, selectors.image_similar(image, k=k))


@api.post(
    "/images",
    response={200: ImageCreatedOut, 201: ImageCreatedOut, **BAD_INPUT, **TOO_MANY},
    throttle=throttles("upload"),
)
def create_image(
    request: HttpRequest, image: File[UploadedFile], title: Form[str] = "", category: Form[str] = ""
) -> Status[dict[str, Any]]:
    """Add an item (201), or find the identical file already stored (200, `duplicate`). A
    signed-in user's upload counts as theirs (staff: approved at once) only with the CSRF
    token; without it, it is an anonymous visitor's (another site cannot upload as them)."""
    data = read_upload(image)
    uploader = request.user if request.user.is_authenticated and check_csrf(request) is None else None
    item, created = services.image_create(
        data=data, title=title, category=category, original_name=image.name or "", uploaded_by=uploader
    )
    # Someone else's item that is not public (hidden, pending, rejected): its state only, not
    # its title (the same bytes must not reveal what was taken down).
    shown = created or item.is_public or request.user.is_staff
    body = {
        "id": item.pk,
        "title": item.title if shown else "",
        "status": item.status,
        "moderation": item.moderation,
        "duplicate": not created,
    }
    return Status(201 if created else 200, body)


@api.get("/images/{image_id}", response={200: ImageDetailOut | ImageStatusOut, **NOT_FOUND})
def image_detail(request: HttpRequest, image_id: int) -> dict[str, Any]:
    """An item's state and details; of an item that is not public only its state (so an
    uploader can follow it), unless the caller is staff."""
    image = selectors.image_get(image_id)
    if image is None:
        raise HttpError(404, "No image with this id.")
    if not image.is_public and not request.user.is_staff:
        return {"id": image.pk, "status": image.status, "moderation": image.moderation, "error": image.error}
    return {
        "status": image.status,
        "moderation": image.moderation,
        "error": image.error,
        "near_duplicate_of": image.near_duplicate_of_id,
        "near_duplicate_explanation": image.near_duplicate_explanation,
        **image_summary(request, image),
    }


@api.post(
    "/images/{image_id}/report",
    response={201: ReportOut, **BAD_INPUT, **NOT_FOUND, **TOO_MANY},
    throttle=throttles("report"),
)
def report(request: HttpRequest, image_id: int, reason: Form[str] = "") -> Status[dict[str, Any]]:
    """Report a searchable item to staff."""
    image = selectors.image_get_searchable(image_id)
    if image is None:
        raise HttpError(404, "No searchable image with this id.")
    try:
        services.report_create(image, reason, services.visitor_key(request.user, client_address(request)))
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    return Status(201, {"id": image.pk, "reported": True})


class BearerToken(HttpBearer):
    """`Authorization: Bearer <key>` with a key from the admin's API tokens."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = services.api_token_user(token)
        if user is None:
            return None
        request.user = user
        return user


def _moderation_endpoint(action: str) -> None:
    def moderate(request: HttpRequest, image_id: int, reason: Form[str] = "") -> dict[str, Any]:
        if not request.auth.is_staff:  # type: ignore[attr-defined]
            raise HttpError(403, "Only staff can moderate.")
        if selectors.image_get(image_id) is None:
            raise HttpError(404, "No image with this id.")
        services.images_moderate([image_id], action, actor=request.auth, reason=reason)  # type: ignore[attr-defined]
        image = selectors.image_get(image_id)
        assert image is not None
        return {"id": image.pk, "status": image.status, "moderation": image.moderation}

    moderate.__name__ = f"moderate_{action}"
    api.post(
        f"/images/{{image_id}}/{action}",
        auth=[BearerToken(), django_auth],
        response={200: ModerationOut, 401: ErrorOut, 403: ErrorOut, **NOT_FOUND},
        summary=f"{action.capitalize()} (staff)",
    )(moderate)


for _action in ("approve", "reject", "hide", "unhide"):
    _moderation_endpoint(_action)
