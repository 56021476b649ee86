"""Reads, one module per family; callers use `selectors.<name>`:

- `catalogue`: browsing, categories, single items, training data
- `search`: similar items, the per-process index readers, searching one model's vectors
- `index_journal`: the index changes after a snapshot, read for readers and the writer
- `search_by_image`: the retrieval pipeline (copies, regions, verification, tiers)
- `moderation`: the staff queue, the log, near-duplicate groups
- `imports`: a bulk import's progress and refused files
- `model_versions`: look-ups and what the admin shows of a model run

A read never writes."""

from .catalogue import (
    category_list,
    image_get,
    image_get_for_viewer,
    image_get_searchable,
    image_list,
    image_media_for_viewer,
    images_status_counts,
    images_with_errors,
    searchable_images,
    training_rows,
)
from .imports import (
    import_job_failures,
    import_job_image_ids,
    import_job_pending_item_ids,
    import_job_progress,
)
from .index_journal import index_current
from .model_versions import (
    model_activation_percent,
    model_evaluation_rows,
    model_training_percent,
    model_version_active,
    model_version_get,
    model_version_headline,
)
from .moderation import (
    MODERATION_VIEWS,
    duplicate_groups_page,
    duplicate_scan_latest,
    moderation_counts,
    moderation_log,
    moderation_queue,
    near_duplicate_groups,
)
from .search import (
    SearchHit,
    SearchResult,
    clamp_k,
    image_similar,
    image_vector,
    index_reader,
    index_readers_forget,
    index_readers_warm,
    search_vector,
)
from .search_by_image import image_search_by_image

__all__ = [
    "MODERATION_VIEWS",
    "SearchHit",
    "SearchResult",
    "category_list",
    "clamp_k",
    "duplicate_groups_page",
    "duplicate_scan_latest",
    "image_get",
    "image_get_for_viewer",
    "image_get_searchable",
    "image_list",
    "image_media_for_viewer",
    "image_search_by_image",
    "image_similar",
    "image_vector",
    "images_status_counts",
    "images_with_errors",
    "import_job_failures",
    "import_job_image_ids",
    "import_job_pending_item_ids",
    "import_job_progress",
    "index_current",
    "index_reader",
    "index_readers_forget",
    "index_readers_warm",
    "model_activation_percent",
    "model_evaluation_rows",
    "model_training_percent",
    "model_version_active",
    "model_version_get",
    "model_version_headline",
    "moderation_counts",
    "moderation_log",
    "moderation_queue",
    "near_duplicate_groups",
    "search_vector",
    "searchable_images",
    "training_rows",
]
