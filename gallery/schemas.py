"""The JSON API's answers, declared so that `/api/docs` documents every one, errors included."""

from ninja import Schema


class ErrorOut(Schema):
    error: str  # in words a person understands


class ImageSummaryOut(Schema):
    id: int
    title: str
    category: str
    url: str  # the item's page
    image_url: str
    thumbnail_url: str


class SearchHitOut(ImageSummaryOut):
    score: float  # cosine similarity, best first


class SearchOut(Schema):
    results: list[SearchHitOut]
    took_ms: float


class ImageCreatedOut(Schema):
    id: int
    title: str
    status: str
    moderation: str
    duplicate: bool  # identical bytes were uploaded before: this is that item


class ImageStatusOut(Schema):
    """What anyone may know of an item that is not public (yet): its state."""

    id: int
    status: str  # processing, indexed, failed or hidden
    moderation: str  # approved, pending or rejected
    error: str


class ImageDetailOut(ImageSummaryOut):
    status: str
    moderation: str
    error: str
    near_duplicate_of: int | None


class ReportOut(Schema):
    id: int
    reported: bool


class ModerationOut(Schema):
    id: int
    status: str
    moderation: str
