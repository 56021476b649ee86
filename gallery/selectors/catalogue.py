"""Reads of the catalogue: browsing, categories, single items, training data."""

from collections.abc import Iterator
from typing import Any

import numpy as np
from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import Q

from ..embedders import ModelRef
from ..models import Embedding, Image, ImageQuerySet

BUILD_CHUNK = 5000  # images whose vectors a build reads at once


def searchable_images() -> ImageQuerySet:
    """What the public may find (the rule is `ImageQuerySet.searchable`)."""
    return Image.objects.searchable()


def image_list(*, category: str = "", page: int | str = 1) -> Page[Image]:
    qs = Image.objects.searchable()
    if category:
        qs = qs.filter(category=category)
    return Paginator(qs, settings.BROWSE_PAGE_SIZE).get_page(page)


def category_list() -> list[str]:
    return list(
        Image.objects.searchable()
        .exclude(category="")
        .order_by("category")
        .values_list("category", flat=True)
        .distinct()
    )


def image_get(pk: int) -> Image | None:
    """Any image by id, whatever its state: the uploader follows its status through this."""
    return Image.objects.filter(pk=pk).first()


def image_get_searchable(pk: int) -> Image | None:
    return Image.objects.searchable().filter(pk=pk).first()


def image_get_for_viewer(pk: int, user: Any) -> Image | None:
    """The item page: public items for everyone, any item for staff."""
    qs = Image.objects.all() if getattr(user, "is_staff", False) else Image.objects.public()
    return qs.filter(pk=pk).first()


def image_media_for_viewer(name: str, user: Any) -> Image | None:
    """The item whose stored photo or thumbnail is `name` (a path under MEDIA_ROOT), when the
    viewer may see it: the same rule as the item page."""
    qs = Image.objects.all() if getattr(user, "is_staff", False) else Image.objects.public()
    return qs.filter(Q(file=name) | Q(thumbnail=name)).first()


def images_status_counts(image_ids: list[int]) -> dict[str, int]:
    """How many of the given images are in each status."""
    counts: dict[str, int] = {}
    for status in Image.objects.filter(pk__in=image_ids).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def images_with_errors(image_ids: list[int], status: str) -> list[Image]:
    return list(Image.objects.filter(pk__in=image_ids, status=status))


def training_rows() -> list[tuple[str, str]]:
    """(stored file name, category) of every searchable image, in id order: a model trained
    on the gallery learns its categories."""
    return list(Image.objects.searchable().order_by("pk").values_list("file", "category"))


class IdWindows:
    """Windows of image ids, one after another, for sweeps that compare the whole gallery a
    part at a time (a scan of a million images every minute or two cost seconds each): each
    key's next window starts where its last one stopped and spans `size` ids past the first
    image there (gaps of deleted images skipped); past the newest image, the rest of the id
    space, and then from the start again. The cursor is the process's own."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._from: dict[str, int] = {}

    def next(self, key: str) -> tuple[int, int]:
        """(start, end): the ids start <= id < end to look at next."""
        start = self._from.get(key, 0)
        first = Image.objects.filter(pk__gte=start).order_by("pk").values_list("pk", flat=True).first()
        if first is None:
            self._from[key] = 0
            return start, 2**62
        self._from[key] = first + self.size
        return start, first + self.size

    def again(self, key: str, start: int) -> None:
        """The window from `start` is not done: the next one is it again."""
        self._from[key] = start


def stored_vectors(images: ImageQuerySet, model_name: str) -> tuple[list[int], list[np.ndarray]]:
    """(ids, vectors) of the images' stored embeddings under one model."""
    rows = Embedding.objects.filter(image__in=images, model_name=model_name).values_list("image_id", "vector")
    ids, vectors = [], []
    for image_id, vector in rows.iterator(chunk_size=2000):
        ids.append(image_id)
        vectors.append(np.frombuffer(bytes(vector), dtype=np.float32))
    return ids, vectors


def stored_chunks(ref: ModelRef, ids: list[int]) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """`stored_vectors` of the given images, BUILD_CHUNK images at a time (a million vectors
    are 6 GB: a build holds one chunk besides the index it fills)."""
    for start in range(0, len(ids), BUILD_CHUNK):
        chunk, vectors = stored_vectors(
            Image.objects.filter(pk__in=ids[start : start + BUILD_CHUNK]), ref.name
        )
        if chunk:
            yield chunk, vectors
