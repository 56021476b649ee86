"""The JSON API (django-ninja): thin, parses input and calls services and selectors.
Errors are always `{"error": "<words a person understands>"}`."""

from django.conf import settings
from django.http import HttpRequest
from ninja import File, Form, NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.files import UploadedFile

from . import selectors, services
from .imaging import ImageRejected
from .models import Image

api = NinjaAPI(title="Search by image", version="1", urls_namespace="api")


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    fields = sorted({str(err.get("loc", ["?"])[-1]) for err in exc.errors})
    missing = [f for f in fields if f == "image"]
    message = "Please attach an image file (form field 'image')." if missing else f"Invalid value for: {', '.join(fields)}."
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
        data=data, title=title, category=category, original_name=image.name or ""
    )
    body = {"id": item.pk, "status": item.status, "duplicate": not created}
    return api.create_response(request, body, status=201 if created else 200)


@api.get("/images/{image_id}")
def image_detail(request, image_id: int):
    image = selectors.image_get_public(image_id)
    if image is None:
        raise HttpError(404, "No image with this id.")
    return {"status": image.status, "error": image.error, **image_summary(request, image)}
