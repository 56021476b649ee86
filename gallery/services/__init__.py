"""Writes, one module per family (HackSoft's services; Zulip's actions). Callers use
`services.<name>`; the modules, in the order an upload meets them:

- `uploads`: the one upload path (`image_create`)
- `embedding`: vectors for stored images (embed queue)
- `index_writer`: the index's single writer (index queue)
- `index_compact`: when an index holds compact vectors; pgvector's move to them, in steps
- `moderation`: approve, reject, hide, unhide, reports
- `duplicates`: near-duplicate scans (a task; groups stored for the staff page)
- `imports`: bulk imports from a folder, a ZIP or a manifest
- `model_versions`: create, train, cancel, resume, evaluate a model
- `activation`: switch searches to another model
- `recovery`: lost tasks found again (worker start, beat)
- `dispatch`: the only door to Celery
- `tokens`: API tokens (stored hashed, shown once)
- `inputs`: text, tags and actor normalisation"""

from ..selectors.catalogue import stored_vectors
from .activation import model_activate, model_activate_start
from .duplicates import duplicate_scan_run, duplicate_scan_start
from .embedding import (
    embedders_prepare,
    embedders_warm,
    images_backfill,
    images_embed,
    images_mark_failed,
    images_record_error,
)
from .imports import (
    import_job_cancel,
    import_job_create,
    import_job_finish_if_done,
    import_job_process,
    import_job_start,
    import_jobs_resume_all,
    import_limits,
    import_root_path,
    import_upload_store,
)
from .index_compact import index_compact_finish
from .index_writer import (
    index_build,
    index_empty,
    index_rebuild,
    index_reconcile,
    index_remove,
    index_snapshot_wait,
    index_sync,
    index_sync_models,
)
from .inputs import visitor_key
from .item_features import item_features_store
from .model_versions import (
    MODEL_KINDS_TRAINED,
    model_evaluate,
    model_evaluate_start,
    model_train,
    model_train_cancel,
    model_train_reopen,
    model_train_resume,
    model_train_start,
    model_version_create,
    model_version_default,
    model_version_log,
)
from .moderation import MODERATION_ACTIONS, images_moderate, report_create
from .recovery import (
    images_catch_up_with_served_models,
    images_enqueue_pending,
    import_job_resume_stalled,
    models_resume_stalled,
    queue_has_work,
    recover_lost_work,
    worker_started,
)
from .remote_images import image_fetch_from_url
from .tokens import api_token_issue, api_token_user
from .uploads import image_create, image_update_metadata

__all__ = [
    "MODEL_KINDS_TRAINED",
    "MODERATION_ACTIONS",
    "api_token_issue",
    "api_token_user",
    "duplicate_scan_run",
    "duplicate_scan_start",
    "embedders_prepare",
    "embedders_warm",
    "image_create",
    "image_fetch_from_url",
    "image_update_metadata",
    "images_backfill",
    "images_catch_up_with_served_models",
    "images_embed",
    "images_enqueue_pending",
    "images_mark_failed",
    "images_moderate",
    "images_record_error",
    "import_job_cancel",
    "import_job_create",
    "import_job_finish_if_done",
    "import_job_process",
    "import_job_resume_stalled",
    "import_job_start",
    "import_jobs_resume_all",
    "import_limits",
    "import_root_path",
    "import_upload_store",
    "index_build",
    "index_compact_finish",
    "index_empty",
    "index_rebuild",
    "index_reconcile",
    "index_remove",
    "index_snapshot_wait",
    "index_sync",
    "index_sync_models",
    "item_features_store",
    "model_activate",
    "model_activate_start",
    "model_evaluate",
    "model_evaluate_start",
    "model_train",
    "model_train_cancel",
    "model_train_reopen",
    "model_train_resume",
    "model_train_start",
    "model_version_create",
    "model_version_default",
    "model_version_log",
    "models_resume_stalled",
    "queue_has_work",
    "recover_lost_work",
    "report_create",
    "stored_vectors",
    "visitor_key",
    "worker_started",
]
