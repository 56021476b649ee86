"""The JSON API (django-ninja): thin, parses input and calls services and selectors.
Errors are always `{"error": "<words a person understands>"}`."""

from django.conf import settings
from django.http import HttpRequest
from ninja import File, Form, NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.files import UploadedFile
from ninja.security import HttpBearer, django_auth

from . import selectors, services
from .imaging import ImageRejected
from .models import ApiToken, Image

api = NinjaAPI(title="Search by image", version="1", urls_namespace="api")


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    fields = sorted({str(err.get("loc", ["?"])[-1]) for err in exc.errors})
    missing = [f for f in fields if f == "image"]
    message = (
        "Please attach an image file (form field 'image')."
        if missing
        else f"Invalid value for: {', '.join(fields)}."
    )
    return api.create_response(request, {"error": message}, status=400)


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


@api.exception_handler(ImageRejected)
def _image_rejected(request, exc: ImageRejected):
    return api.create_response(request, {"error": str(exc)}, status=400)


def read_upload(upload: UploadedFile) -> bytes:
    """Refuse oversized files before reading them into memory."""
    if upload.size is not None and upload.size > settings.UPLOAD_MAX_BYTES:
        raise ImageRejected(
            f"The file is too large ({upload.size / (1024 * 1024):.0f} MB); the limit is "
            f"{settings.UPLOAD_MAX_BYTES / (1024 * 1024):.0f} MB."
        )
    return upload.read()


def image_summary(request: HttpRequest, image: Image) -> dict:
    return {
        "id": image.pk,
        "title": image.title,
        "category": image.category,
        "url": request.build_absolute_uri(image.get_absolute_url()),
        "image_url": request.build_absolute_uri(image.file.url),
        "thumbnail_url": request.build_absolute_uri(image.thumbnail.url),
    }


def results_payload(request: HttpRequest, result: selectors.SearchResult) -> dict:
    return {
        "results": [
            {"id": hit.image.pk, "score": round(hit.score, 6), **image_summary(request, hit.image)}
            for hit in result.hits
        ],
        "took_ms": round(result.took_ms, 2),
    }


@api.post("/search")
def search(request, image: File[UploadedFile], k: Form[int] = 20, category: Form[str] = ""):
    result = selectors.image_search_by_image(read_upload(image), k=k, category=category.strip())
    return results_payload(request, result)


@api.get("/images/{image_id}/similar")
def similar(request, image_id: int, k: int = 20):
    image = selectors.visible_images().filter(pk=image_id).first()
    if image is None:
        raise HttpError(404, "No searchable image with this id.")
    return results_payload(request, selectors.image_similar(image, k=k))


@api.post("/images")
def create_image(request, image: File[UploadedFile], title: Form[str] = "", category: Form[str] = ""):
    data = read_upload(image)
    item, created = services.image_create(
        data=data, title=title, category=category, original_name=image.name or "", uploaded_by=request.user
    )
    body = {
        "id": item.pk,
        "title": item.title,
        "status": item.status,
        "moderation": item.moderation,
        "duplicate": not created,
    }
    return api.create_response(request, body, status=201 if created else 200)


@api.get("/images/{image_id}")
def image_detail(request, image_id: int):
    image = selectors.image_get_public(image_id)
    if image is None:
        raise HttpError(404, "No image with this id.")
    public = image.status != Image.Status.HIDDEN and image.moderation == Image.Moderation.APPROVED
    if not public and not request.user.is_staff:
        # the uploader may follow its status, but a hidden or unapproved item is not shown
        return {"id": image.pk, "status": image.status, "moderation": image.moderation, "error": image.error}
    return {
        "status": image.status,
        "moderation": image.moderation,
        "error": image.error,
        "near_duplicate_of": image.near_duplicate_of_id,
        **image_summary(request, image),
    }


@api.post("/images/{image_id}/report", response={201: dict})
def report(request, image_id: int, reason: Form[str] = ""):
    image = selectors.visible_images().filter(pk=image_id).first()
    if image is None:
        raise HttpError(404, "No searchable image with this id.")
    try:
        services.report_create(image, reason)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    return 201, {"id": image.pk, "reported": True}


class BearerToken(HttpBearer):
    """`Authorization: Bearer <key>` with a key from the admin's API tokens."""

    def authenticate(self, request, token):
        row = ApiToken.objects.select_related("user").filter(key=token, user__is_active=True).first()
        if row is None:
            return None
        request.user = row.user
        return row.user


def _moderation_endpoint(action: str):
    def moderate(request, image_id: int, reason: Form[str] = ""):
        if not request.auth.is_staff:
            raise HttpError(403, "Only staff can moderate.")
        if not Image.objects.filter(pk=image_id).exists():
            raise HttpError(404, "No image with this id.")
        services.images_moderate([image_id], action, actor=request.auth, reason=reason)
        image = Image.objects.get(pk=image_id)
        return {"id": image.pk, "status": image.status, "moderation": image.moderation}

    moderate.__name__ = f"moderate_{action}"
    api.post(
        f"/images/{{image_id}}/{action}",
        auth=[BearerToken(), django_auth],
        summary=f"{action.capitalize()} (staff)",
    )(moderate)


for _action in ("approve", "reject", "hide", "unhide"):
    _moderation_endpoint(_action)
