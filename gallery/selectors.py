"""Reads: search by image, similar items, browsing. Searches run in the web process: the
query is decoded and embedded here (model loaded once per process) and the saved index is
read through a per-process `IndexReader` that follows the writer's new versions."""

import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.paginator import Paginator

from .embedders import ModelRef, active_model, get_embedder
from .imaging import decode_image
from .index import IndexReader
from .models import Embedding, Image, ModelVersion

_readers: dict[str, IndexReader] = {}


def index_reader(ref: ModelRef | None = None) -> IndexReader:
    """The reader of a model's index (the active model's by default)."""
    directory = (ref or active_model()).index_dir
    key = str(directory)
    if key not in _readers:
        _readers[key] = IndexReader(directory, ef=settings.INDEX_EF_SEARCH)
    return _readers[key]


@dataclass
class SearchHit:
    image: Image
    score: float


@dataclass
class SearchResult:
    hits: list[SearchHit]
    took_ms: float


def clamp_k(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        k = settings.SEARCH_DEFAULT_K
    return max(1, min(k, settings.SEARCH_MAX_K))


def visible_images():
    """What the public may find: indexed and approved."""
    return Image.objects.filter(status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)


def search_vector(
    vector: np.ndarray,
    k: int,
    *,
    category: str = "",
    exclude_id: int | None = None,
    ref: ModelRef | None = None,
) -> list[SearchHit]:
    """Nearest visible items. Over-fetches, then keeps only rows the database says are
    indexed, so an item hidden a moment ago never shows even before the index drops it.
    A hash model's index is searched by Hamming distance, re-ranked by cosine."""
    ref = ref or active_model()
    index = index_reader(ref).get()
    if index is None or len(index) == 0:
        return []
    allowed = None
    if category:
        allowed = set(visible_images().filter(category=category).values_list("pk", flat=True))
        if not allowed:
            return []
    wanted = k + (1 if exclude_id is not None else 0)
    fetch = wanted + max(10, wanted // 2)
    if ref.bits:
        hits = index.hamming_query(vector, fetch, allowed, candidates=max(200, 10 * fetch))
    else:
        hits = index.query(vector, fetch, allowed)
    rows = visible_images().in_bulk([label for label, _ in hits])
    result = []
    for label, score in hits:
        if label == exclude_id or label not in rows:
            continue
        result.append(SearchHit(rows[label], max(-1.0, min(1.0, score))))
        if len(result) == k:
            break
    return result


def image_search_by_image(data: bytes, *, k: int = 20, category: str = "") -> SearchResult:
    """Raises `ImageRejected` for bad query files, exactly like an upload."""
    started = time.perf_counter()
    decoded = decode_image(
        data,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        draft_size=2 * settings.EMBEDDER_IMAGE_SIZE,
    )
    ref = active_model()  # one model for the query vector and the index, even mid-switch
    vector = get_embedder(ref).embed([decoded.image])[0]
    hits = search_vector(vector, clamp_k(k), category=category, ref=ref)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)


def image_vector(image: Image, ref: ModelRef | None = None) -> np.ndarray | None:
    ref = ref or active_model()
    index = index_reader(ref).get()
    vector = index.vector(image.pk) if index is not None else None
    if vector is None:
        row = Embedding.objects.filter(image=image, model_name=ref.name).first()
        vector = row.as_array() if row else None
    return vector


def image_similar(image: Image, *, k: int = 20) -> SearchResult:
    started = time.perf_counter()
    ref = active_model()
    vector = image_vector(image, ref)
    hits = [] if vector is None else search_vector(vector, clamp_k(k), exclude_id=image.pk, ref=ref)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)


def image_list(*, category: str = "", page: int | str = 1):
    qs = visible_images()
    if category:
        qs = qs.filter(category=category)
    return Paginator(qs, settings.BROWSE_PAGE_SIZE).get_page(page)


def category_list() -> list[str]:
    return list(
        visible_images()
        .exclude(category="")
        .order_by("category")
        .values_list("category", flat=True)
        .distinct()
    )


def image_get_public(pk: int) -> Image | None:
    """Any image by id (the status endpoint shows processing/failed/hidden ones too)."""
    return Image.objects.filter(pk=pk).first()


def import_job_progress(job) -> dict:
    """Counts derived from the items, the rate so far and the time left."""
    from django.db.models import Count
    from django.utils import timezone

    from .models import ImportItem

    counts = dict(job.items.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
    imported = counts.get(ImportItem.State.IMPORTED, 0)
    duplicates = counts.get(ImportItem.State.DUPLICATE, 0)
    failed = counts.get(ImportItem.State.FAILED, 0)
    pending = counts.get(ImportItem.State.PENDING, 0)
    searchable = Image.objects.filter(
        pk__in=job.items.filter(state=ImportItem.State.IMPORTED).values("image_id"),
        status=Image.Status.INDEXED,
    ).count()
    processed = imported + duplicates + failed
    elapsed = (
        ((job.finished_at or timezone.now()) - job.started_at).total_seconds() if job.started_at else 0.0
    )
    worked = (
        processed
        - job.items.filter(
            state=ImportItem.State.FAILED, image__isnull=True, error__endswith="refused)"
        ).count()
    )
    rate = worked / elapsed if elapsed > 0 else 0.0
    return {
        "id": job.pk,
        "state": job.state,
        "total": job.total,
        "imported": imported,
        "duplicates": duplicates,
        "failed": failed,
        "pending": pending,
        "searchable": searchable,
        "percent": round(100.0 * processed / job.total, 1) if job.total else 100.0,
        "rate": round(rate, 2),
        "seconds_left": round(pending / rate) if rate > 0 and pending else (0 if not pending else None),
        "error": job.error,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def moderation_queue(show: str = "pending"):
    """Staff queue: pending approval, reported (open reports), hidden, or everything recent."""
    from django.db.models import Count, Q

    qs = Image.objects.annotate(open_reports=Count("reports", filter=Q(reports__resolved_at__isnull=True)))
    if show == "pending":
        qs = qs.filter(moderation=Image.Moderation.PENDING)
    elif show == "reported":
        qs = qs.filter(open_reports__gt=0)
    elif show == "hidden":
        qs = qs.filter(status=Image.Status.HIDDEN)
    return qs.order_by("-open_reports", "-created_at")


def moderation_counts() -> dict:
    from .models import Report

    return {
        "pending": Image.objects.filter(moderation=Image.Moderation.PENDING).count(),
        "reported": Report.objects.filter(resolved_at__isnull=True).values("image").distinct().count(),
        "hidden": Image.objects.filter(status=Image.Status.HIDDEN).count(),
    }


def near_duplicate_groups(threshold: float, *, neighbours: int = 10, limit: int = 200) -> list[list]:
    """Clusters of near-identical visible items: link every pair whose cosine similarity is
    at least `threshold` (k nearest neighbours from the index), take connected components."""
    index = index_reader().get()
    if index is None or len(index) < 2:
        return []
    labels = sorted(index.labels())
    parent = {label: label for label in labels}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for start in range(0, len(labels), 2048):
        chunk = labels[start : start + 2048]
        vectors = index.hnsw.get_items(chunk)
        found, distances = index.hnsw.knn_query(
            np.asarray(vectors, dtype=np.float32), k=min(neighbours, len(index))
        )
        for label, row, dist in zip(chunk, found, distances):
            for other, d in zip(row, dist):
                if int(other) != label and 1.0 - d >= threshold:
                    parent[find(label)] = find(int(other))
    groups: dict[int, list[int]] = {}
    for label in labels:
        groups.setdefault(find(label), []).append(label)
    clusters = [members for members in groups.values() if len(members) > 1]
    rows = visible_images().in_bulk([pk for members in clusters for pk in members])
    result = []
    for members in sorted(clusters, key=len, reverse=True)[:limit]:
        images = sorted((rows[pk] for pk in members if pk in rows), key=lambda im: im.created_at)
        if len(images) > 1:
            result.append(images)
    return result


# --- model versions: what the admin shows -------------------------------------------------

_HIDDEN_FIGURES = {"confusion", "confusion_png", "classes", "protocol", "data", "evaluated_at"}


def _fraction(done, total):
    return round(100.0 * done / total, 1) if total else 0.0


def model_training_percent(version) -> float:
    if version.state == ModelVersion.State.READY:
        return 100.0
    p = version.progress or {}
    elapsed, eta = p.get("elapsed"), p.get("eta_seconds")
    if eta is not None and elapsed is not None:
        return min(100.0, _fraction(elapsed, elapsed + eta))
    return min(100.0, _fraction(p.get("done") or 0, p.get("total") or 0))


def model_activation_percent(version) -> float:
    if version.activation == ModelVersion.Activation.ACTIVE:
        return 100.0
    p = version.activation_progress or {}
    return min(100.0, _fraction(p.get("done") or 0, p.get("total") or 0))


def model_evaluation_rows(figures: dict) -> list:
    """[label, value] rows of a protocol's scalar figures; nested dicts one level deep."""
    rows = []
    for key, value in figures.items():
        if key in _HIDDEN_FIGURES:
            continue
        if isinstance(value, dict):
            rows += [[f"{key} {k}", v] for k, v in value.items() if not isinstance(v, dict | list)]
        elif not isinstance(value, list):
            rows.append([key, value])
    return rows


def model_version_headline(version) -> str:
    p = version.progress or {}
    if version.state == ModelVersion.State.QUEUED:
        return "queued"
    if version.state == ModelVersion.State.TRAINING:
        if p.get("stage") == "training" or p.get("epoch"):
            loss = p.get("loss")
            return f"epoch {p.get('epoch', 0):.1f}" + (f", loss {loss:.3g}" if loss is not None else "")
        return f"{p.get('stage') or 'starting'} {p.get('done', 0)}/{p.get('total', 0)}"
    if version.state == ModelVersion.State.FAILED:
        return f"failed: {version.error[:80]}"
    if version.state == ModelVersion.State.CANCELLED:
        return f"cancelled at epoch {p.get('epoch', 0):.1f}" if p.get("epoch") else "cancelled"
    parts = []
    evaluations = version.evaluations or {}
    if "cifar10" in evaluations and "map@1000" in evaluations["cifar10"]:
        parts.append(f"mAP@1000 {evaluations['cifar10']['map@1000']:.3f}")
    if "neardup" in evaluations and "recall@1" in evaluations["neardup"]:
        parts.append(f"recall@1 {evaluations['neardup']['recall@1']:.3f}")
    if not parts and version.metrics.get("final_loss") is not None:
        parts.append(f"{version.metrics.get('epochs', 0)} epochs, loss {version.metrics['final_loss']:.3g}")
    if version.activation == ModelVersion.Activation.ACTIVATING:
        parts.append(f"activating {model_activation_percent(version):.0f}%")
    return ", ".join(parts) or "ready"
