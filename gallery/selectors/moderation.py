"""Staff reads: the moderation queue and its counts, the log, near-duplicate groups."""

from dataclasses import dataclass, field

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q, QuerySet

from ..embedders import copy_model
from ..models import DuplicateGroupRow, DuplicateScan, Image, ImageQuerySet, ModerationAction, Report
from ..retrieval.params import retrieval_params
from ..retrieval.tiers import COPY_TIERS, Evidence, classify, same_shape
from .search import SearchIndex, index_reader

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


@dataclass
class DuplicateGroup:
    """Copies of one picture: the oldest first (the one to keep), and for each other item
    why it counts as a copy, in the words search's tiers use."""

    images: list[Image]
    explanations: dict[int, str] = field(default_factory=dict)

    @property
    def members(self) -> list[tuple[Image, str]]:
        return [(im, self.explanations.get(im.pk, "the oldest, kept")) for im in self.images]

    def __len__(self) -> int:
        return len(self.images)


def near_duplicate_groups(
    *, index: SearchIndex | None = None, limit: int | None = 200
) -> list[DuplicateGroup]:
    """Groups of searchable items that are copies of one another by the same rule as
    search's tiers (`retrieval.tiers.classify` on the copy channel: perceptual hashes close
    and copy-model vectors agreeing), and the uploads noted as copies by search's whole
    pipeline (`near_duplicate_of`: turned, cropped, marked copies too), linked into connected
    components."""
    index = index or index_reader(copy_model()).get()
    if index is None or len(index) < 2:
        return []
    noted = Image.objects.filter(near_duplicate_of__isnull=False).values_list(
        "pk", "near_duplicate_of_id", "near_duplicate_explanation"
    )
    links = _copy_links(index) + [(pk, of, why or "an edited copy") for pk, of, why in noted]
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in links:
        parent[find(a)] = find(b)
    clusters: dict[int, list[int]] = {}
    for label in parent:
        clusters.setdefault(find(label), []).append(label)
    rows = Image.objects.searchable().in_bulk(list(parent))
    why = {(a, b): text for a, b, text in links} | {(b, a): text for a, b, text in links}
    groups = []
    for members in sorted(clusters.values(), key=len, reverse=True):
        images = sorted((rows[pk] for pk in members if pk in rows), key=lambda im: (im.created_at, im.pk))
        if len(images) < 2:
            continue
        kept = images[0].pk
        explanations = {
            im.pk: why.get((kept, im.pk)) or next(t for (a, b), t in why.items() if a == im.pk)
            for im in images[1:]
        }
        groups.append(DuplicateGroup(images, explanations))
        if limit is not None and len(groups) == limit:
            break
    return groups


def _copy_links(index: SearchIndex) -> list[tuple[int, int, str]]:
    """(item, item, explanation) for every pair the copy tiers call a copy."""
    thresholds = retrieval_params().copies
    hashes = index.hash_index()
    pairs = []
    for label, code in zip(hashes.labels, hashes.codes):
        mine = index.vector(int(label))
        if mine is None:
            continue
        for match in hashes.within(code, thresholds.loose_hash_distance):
            if match.label <= label:
                continue  # itself, or a pair already seen from the other side
            other = index.vector(match.label)
            if other is not None:
                pairs.append((int(label), match.label, match.distance, float(mine @ other)))
    involved = sorted({label for pair in pairs for label in pair[:2]})
    shapes = {}
    for start in range(0, len(involved), 5000):  # (SQLite takes at most 32,766 parameters)
        chunk = involved[start : start + 5000]
        rows = Image.objects.filter(pk__in=chunk).values_list("pk", "width", "height")
        shapes.update({pk: (width, height) for pk, width, height in rows})
    links = []
    for first, second, distance, cosine in pairs:
        same = first in shapes and second in shapes and same_shape(shapes[first], shapes[second])
        decision = classify(Evidence(cosine=cosine, hash_distance=distance, same_aspect=same), thresholds)
        if decision.match in COPY_TIERS:
            links.append((first, second, decision.explanation))
    return links


def duplicate_scan_latest() -> tuple[DuplicateScan | None, DuplicateScan | None]:
    """(the newest scan in any state, the newest finished one): the page shows the groups of
    the second and whether another is on its way."""
    newest = DuplicateScan.objects.order_by("-created_at", "-pk").first()
    done = (
        DuplicateScan.objects.filter(state=DuplicateScan.State.DONE).order_by("-finished_at", "-pk").first()
    )
    return newest, done


def duplicate_groups_page(
    scan: DuplicateScan, number: str | int | None, per_page: int = 20
) -> tuple["Page[DuplicateGroupRow]", list[DuplicateGroup]]:
    """One page of a scan's stored groups (for the page links), and its groups as
    `DuplicateGroup`s of the items still visible (an item hidden since the scan drops out; a
    group left with one item shows no more)."""
    page = Paginator(scan.groups.order_by("rank"), per_page).get_page(number)
    ids = [int(image_id) for row in page.object_list for image_id, _ in row.members]
    rows = Image.objects.searchable().in_bulk(ids)
    groups = []
    for row in page.object_list:
        members = [(rows[int(pk)], text) for pk, text in row.members if int(pk) in rows]
        if len(members) >= 2:
            groups.append(DuplicateGroup([im for im, _ in members], {im.pk: t for im, t in members[1:]}))
    return page, groups
