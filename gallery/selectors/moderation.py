"""Staff reads: the moderation queue and its counts, the log, near-duplicate groups."""

from django.db.models import Count, Q, QuerySet

from ..index import VectorIndex
from ..models import Image, ImageQuerySet, ModerationAction, Report
from .search import index_reader

MODERATION_VIEWS = ("pending", "reported", "hidden", "all")


def moderation_queue(show: str = "pending") -> ImageQuerySet:
    """Staff queue: pending approval, reported (open reports), hidden, or everything recent."""
    qs = Image.objects.annotate(open_reports=Count("reports", filter=Q(reports__resolved_at__isnull=True)))
    if show == "pending":
        qs = qs.filter(moderation=Image.Moderation.PENDING)
    elif show == "reported":
        qs = qs.filter(open_reports__gt=0)
    elif show == "hidden":
        qs = qs.filter(status=Image.Status.HIDDEN)
    return qs.order_by("-open_reports", "-created_at").prefetch_related("reports")


def moderation_counts() -> dict[str, int]:
    return {
        "pending": Image.objects.filter(moderation=Image.Moderation.PENDING).count(),
        "reported": Report.objects.filter(resolved_at__isnull=True).values("image").distinct().count(),
        "hidden": Image.objects.filter(status=Image.Status.HIDDEN).count(),
    }


def moderation_log() -> QuerySet[ModerationAction]:
    """Who did what to which item, newest first."""
    return ModerationAction.objects.select_related("image", "actor")


def near_duplicate_groups(threshold: float, *, neighbours: int = 10, limit: int = 200) -> list[list[Image]]:
    """Clusters of near-identical searchable items: link every pair whose cosine similarity
    is at least `threshold` (k nearest neighbours from the index), take connected components."""
    index = index_reader().get()
    if index is None or len(index) < 2:
        return []
    clusters = _linked_components(index, threshold, min(neighbours, len(index)))
    rows = Image.objects.searchable().in_bulk([pk for members in clusters for pk in members])
    result = []
    for members in sorted(clusters, key=len, reverse=True)[:limit]:
        images = sorted((rows[pk] for pk in members if pk in rows), key=lambda im: im.created_at)
        if len(images) > 1:
            result.append(images)
    return result


def _linked_components(index: VectorIndex, threshold: float, k: int) -> list[list[int]]:
    """Union-find over the index's k-nearest-neighbour links of at least `threshold`: the
    groups of two or more labels."""
    labels = sorted(index.labels())
    parent = {label: label for label in labels}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for start in range(0, len(labels), 2048):
        chunk = labels[start : start + 2048]
        found, similarities = index.neighbours(chunk, k)
        for label, row, sims in zip(chunk, found, similarities):
            for other in row[(sims >= threshold) & (row != label)]:
                parent[find(label)] = find(int(other))
    groups: dict[int, list[int]] = {}
    for label in labels:
        groups.setdefault(find(label), []).append(label)
    return [members for members in groups.values() if len(members) > 1]
