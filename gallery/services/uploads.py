"""The one upload path: the page, the API, the admin and bulk imports all store images
through `image_create`."""

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction

from ..imaging import decode_image, encode_for_storage, make_thumbnail, sha256_of
from ..models import Image
from . import dispatch
from .inputs import acting_user, clean_tags, clean_text


def image_create(
    *,
    data: bytes,
    title: str = "",
    category: str = "",
    original_name: str = "",
    tags: str | list[str] | None = None,
    external_id: str = "",
    uploaded_by: Any = None,
    trusted: bool = False,
    enqueue: bool = True,
) -> tuple[Image, bool]:
    """Validate, store a re-encoded copy and a thumbnail, record the image, and (after the
    transaction commits) queue its embedding. Returns (image, created); identical bytes
    return the existing image, and a known `external_id` updates that item's metadata.
    `trusted` (staff, imports) skips pre-moderation. Raises `ImageRejected` and leaves
    nothing behind."""
    external_id = clean_text(external_id, 200)
    if external_id:
        known = Image.objects.filter(external_id=external_id).first()
        if known:
            return image_update_metadata(known, title=title, category=category, tags=tags), False
    decoded = decode_image(data, max_bytes=settings.UPLOAD_MAX_BYTES, max_pixels=settings.UPLOAD_MAX_PIXELS)
    digest = sha256_of(data)
    existing = Image.objects.filter(sha256=digest).first()
    if existing:
        return existing, False
    pre_moderated = (
        settings.MODERATION == "pre" and not trusted and not getattr(uploaded_by, "is_staff", False)
    )
    stored, ext = encode_for_storage(decoded.image)
    thumb = make_thumbnail(decoded.image, settings.THUMBNAIL_SIZE)
    image = Image(
        title=clean_text(title, 200) or clean_text(Path(original_name).stem, 200) or "Untitled",
        category=clean_text(category, 100),
        original_name=clean_text(Path(original_name).name, 255),
        original_format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        byte_size=len(data),
        sha256=digest,
        tags=clean_tags(tags),
        external_id=external_id or None,
        uploaded_by=acting_user(uploaded_by),
        moderation=Image.Moderation.PENDING if pre_moderated else Image.Moderation.APPROVED,
    )
    try:
        with transaction.atomic():
            # Random names: a file's address cannot be derived from its bytes (media of items
            # that are not public are refused by `views.media` anyway).
            name = secrets.token_urlsafe(18)
            image.file.save(f"{name}.{ext}", ContentFile(stored), save=False)
            image.thumbnail.save(f"{name}.jpg", ContentFile(thumb), save=False)
            image.save()
            if enqueue:
                dispatch.images_embed([image.pk])
    except IntegrityError:
        _delete_files(image)  # the same bytes were uploaded concurrently: keep theirs
        return Image.objects.get(sha256=digest), False
    except BaseException:
        _delete_files(image)
        raise
    return image, True


def image_update_metadata(
    image: Image, *, title: str = "", category: str = "", tags: str | list[str] | None = None
) -> Image:
    """Change the given non-empty fields (an import naming a known `external_id`)."""
    changed: dict[str, Any] = {}
    if clean_text(title, 200):
        changed["title"] = clean_text(title, 200)
    if clean_text(category, 100):
        changed["category"] = clean_text(category, 100)
    if tags:
        changed["tags"] = clean_tags(tags)
    if changed:
        for field, value in changed.items():
            setattr(image, field, value)
        image.save(update_fields=[*changed, "updated_at"])
    return image


def _delete_files(image: Image) -> None:
    for field in (image.file, image.thumbnail):
        if field.name:
            field.storage.delete(field.name)
