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
    score: float  # cosine similarity of the vectors that ranked it
    match: str  # exact (the same picture), near_duplicate (an edited copy of it) or similar
    explanation: str  # in words a person understands: "a crop of this photo", ...
    box: list[int] | None = None  # x, y, w, h in pixels of the query, when the item is a part of it


class RegionOut(Schema):
    box: list[int]  # x, y, w, h in pixels of the query
    score: float  # cosine similarity of the best item found in it


class SearchOut(Schema):
    results: list[SearchHitOut]
    regions: list[RegionOut] = []  # where items may be in the query (suggested boxes)
    took_ms: float
    stages_ms: dict[str, float] = {}  # where the time went: decode, embed, search, verify, regions, rank


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
    near_duplicate_explanation: str  # why it is a copy ("a crop of this photo"); "" when not one


class ReportOut(Schema):
    id: int
    reported: bool


class ModerationOut(Schema):
    id: int
    status: str
    moderation: str
