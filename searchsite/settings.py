"""Settings, all overridable from the environment (or a `.env` file beside manage.py)."""

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from gallery import queues

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)


def _local_secret_key(path: Path) -> str:
    """A random key made on first use and kept in VAR_DIR (readable by its owner only), so a
    fresh install never runs with a key anyone can read in the source. Every process of one
    machine shares it; several machines must share SECRET_KEY from the environment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


SECRET_KEY = env("SECRET_KEY", default="") or _local_secret_key(VAR_DIR / "secret_key")
if not DEBUG and (len(SECRET_KEY) < 50 or SECRET_KEY.startswith(("insecure-", "django-insecure-"))):
    raise ImproperlyConfigured(
        "SECRET_KEY is a known or short key and DEBUG is off: set SECRET_KEY to a long random "
        "value (python -c 'import secrets; print(secrets.token_urlsafe(50))'), or leave it unset "
        "to use a key made for this machine."
    )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Behind a TLS-terminating proxy: trust its X-Forwarded-Proto/Host so absolute URLs are https.
if env.bool("BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
# Served over HTTPS: HTTPS=1 turns on redirects, secure cookies and HSTS; each can be set apart.
HTTPS = env.bool("HTTPS", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=HTTPS)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "gallery",
]

MIDDLEWARE = [
    "gallery.metrics.RequestMetricsMiddleware",  # first: times everything below it
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before anything reads the body (the CSRF check reads the form): too large is 413 at once.
    "gallery.middleware.BodySizeLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "searchsite.urls"
WSGI_APPLICATION = "searchsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web, worker and import command write concurrently: wait for locks, use WAL, and let
    # the tests' worker process open the same test database file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # One test database file per test run, so that two runs on one machine do not share it.
    DATABASES["default"]["TEST"] = {
        "NAME": env("TEST_SQLITE_NAME", default=str(VAR_DIR / f"test_db_{os.getpid()}.sqlite3"))
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
# Serve MEDIA_ROOT from Django itself (with nosniff); turn off behind a real web server.
SERVE_MEDIA = env.bool("SERVE_MEDIA", default=True)
# Media through a front server after the visibility check: nginx `internal` location prefix
# (X-Accel-Redirect), or Apache/lighttpd X-Sendfile.
MEDIA_ACCEL_REDIRECT = env("MEDIA_ACCEL_REDIRECT", default="")
MEDIA_SENDFILE = env.bool("MEDIA_SENDFILE", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True

# Uploads: Django has no cap on file size, so the upload service checks these itself.
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=20 * 1024 * 1024)
UPLOAD_MAX_PIXELS = env.int("UPLOAD_MAX_PIXELS", default=40_000_000)
DATA_UPLOAD_MAX_NUMBER_FILES = 10
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
THUMBNAIL_SIZE = env.int("THUMBNAIL_SIZE", default=320)
# Query by URL (POST /api/search url=): one time budget for the whole fetch, redirects
# included; loopback and private networks are refused unless allowed (tests, a closed intranet).
QUERY_URL_TIMEOUT = env.float("QUERY_URL_TIMEOUT", default=5.0)
QUERY_URL_ALLOW_PRIVATE = env.bool("QUERY_URL_ALLOW_PRIVATE", default=False)

# Embedding and the vector index.
EMBEDDER = env("EMBEDDER", default="efficientnet_lite0")
EMBEDDER_IMAGE_SIZE = env.int("EMBEDDER_IMAGE_SIZE", default=128)
# Forward passes per catalogue photo of the default embedder (`EfficientNetLiteEmbedder.embed_gallery`):
# 3 = the whole photo, its centre crop, the photo brighter; 2 = the whole and the crop brightened.
# Part of the model's name: another value is another model, whose vectors are made anew.
EMBEDDER_GALLERY_VIEWS = env.int("EMBEDDER_GALLERY_VIEWS", default=3)
if EMBEDDER_GALLERY_VIEWS not in (1, 2, 3):
    raise ImproperlyConfigured("EMBEDDER_GALLERY_VIEWS must be 1, 2 or 3")
# Keep vectors of each catalogue photo's details (four corners) beside the whole photo's, for
# close-ups of part of an item: four more passes per imported photo, and an index of 4 x 192
# numbers per item (half the copy index). Off by default: on bench/robust.py it found 1 more
# zoom of 24 (recall@1 0.54 -> 0.58; the detail candidates rarely pass verification) for 2.3x
# the embedding work.
COPY_DETAILS = env.bool("COPY_DETAILS", default=False)
# Keep each catalogue photo's local features (ORB and SIFT) in the media storage after it is
# embedded (`gallery/services/item_features.py`): about 56 kB a product photo; a search that
# verifies it reads them instead of computing them (photos not in the catalogue: p50 762 ->
# 624 ms, bench/search_latency.py --outside). Off: computed per web process, as before.
ITEM_FEATURES_KEPT = env.bool("ITEM_FEATURES_KEPT", default=True)
EMBEDDER_WEIGHTS_DIR = env("EMBEDDER_WEIGHTS_DIR", default=str(VAR_DIR / "weights"))
TORCH_THREADS = env.int("TORCH_THREADS", default=2)
# OpenCV's threads per process (0: one per core). A search's local features and pixel checks
# are small images: split over two cores they finished 3.6 ms sooner but cost 4 ms more CPU,
# which the other searches of a busy site pay for. Processes, not threads, share the cores.
OPENCV_THREADS = env.int("OPENCV_THREADS", default=1)
# Bulk work (embedding imports, training) runs below the web's searches: a worker's pool
# processes add this to their nice value. `runapp` sets 10 for the embed and train workers.
WORKER_NICE = env.int("WORKER_NICE", default=0)
# The networks run through ONNX Runtime (exported from PyTorch on first use, kept in ONNX_DIR)
# when its vectors agree with eager PyTorch's within ONNX_TOLERANCE; `torch`: eager PyTorch.
INFERENCE = env("INFERENCE", default="onnx")
ONNX_TOLERANCE = env.float("ONNX_TOLERANCE", default=1e-3)
# The agreed graph then runs on OpenVINO's CPU plugin (`gallery/embedders/openvino_runtime.py`)
# in this precision: `bf16` (where the CPU computes it natively, else f32; accepted when its
# vectors are within cosine OPENVINO_MIN_COSINE of eager PyTorch's), `f32`, or `off`.
OPENVINO = env("OPENVINO", default="bf16")
if OPENVINO not in ("bf16", "f32", "off"):
    raise ImproperlyConfigured("OPENVINO must be bf16, f32 or off")
OPENVINO_MIN_COSINE = env.float("OPENVINO_MIN_COSINE", default=0.99)
# Embed queries with the agreed ONNX graphs alone, never importing torch (about 700 MB less per
# process): set for the web by searchsite/gunicorn.conf.py; the workers keep torch.
TORCH_FREE_QUERIES = env.bool("TORCH_FREE_QUERIES", default=False)
EMBED_BATCH_SIZE = env.int("EMBED_BATCH_SIZE", default=32)
EMBED_MAX_ATTEMPTS = env.int("EMBED_MAX_ATTEMPTS", default=3)
INDEX_DIR = Path(env("INDEX_DIR", default=str(VAR_DIR / "index")))
# Trained models: one folder per model version (weights, checkpoints, pictures).
MODELS_DIR = Path(env("MODELS_DIR", default=str(VAR_DIR / "models")))
ONNX_DIR = Path(env("ONNX_DIR", default=str(VAR_DIR / "onnx")))
# Where the vectors are searched: `hnswlib` (files in INDEX_DIR, one machine) or `pgvector`
# (PostgreSQL with the pgvector extension: every web and worker machine shares one database;
# see the README, "Scaling out").
VECTOR_BACKEND = env("VECTOR_BACKEND", default="hnswlib")
if VECTOR_BACKEND not in ("hnswlib", "pgvector"):
    raise ImproperlyConfigured(f"VECTOR_BACKEND must be hnswlib or pgvector, not {VECTOR_BACKEND!r}")
if VECTOR_BACKEND == "pgvector" and not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("VECTOR_BACKEND=pgvector needs a PostgreSQL DATABASE_URL")
# Memory PostgreSQL may use to build a model's HNSW index in one go (`PgVectorIndex.load`):
# pgvector builds fast while the graph fits in it, and slowly past it.
PGVECTOR_BUILD_MEMORY = env("PGVECTOR_BUILD_MEMORY", default="1GB")
if VECTOR_BACKEND == "pgvector" and COPY_DETAILS:
    raise ImproperlyConfigured(
        "COPY_DETAILS keeps several vectors per item, which pgvector does not hold here"
    )
# Searches by image one web process runs at once; the others wait their turn (0: no limit).
# One per process: each search is CPU work, and the web runs two processes on two cores
# (bench/search_latency.py, 8 clients: see gallery/selectors/search_slots.py).
SEARCH_SLOTS = env.int("SEARCH_SLOTS", default=1)
SEARCH_SLOT_WAIT_SECONDS = env.float("SEARCH_SLOT_WAIT_SECONDS", default=20.0)
INDEX_EF_SEARCH = env.int("INDEX_EF_SEARCH", default=128)
INDEX_M = env.int("INDEX_M", default=16)
INDEX_EF_CONSTRUCTION = env.int("INDEX_EF_CONSTRUCTION", default=200)
# Compact vectors (gallery/index/compact.py): an index of at least INDEX_COMPACT_MIN_ITEMS items
# holds its vectors projected to INDEX_COMPACT_DIMS numbers by a PCA learned on the gallery (and
# learned again when the gallery doubled), the full ones as float16 beside it for the re-rank.
# 0 keeps the full vectors at every size.
INDEX_COMPACT_DIMS = env.int("INDEX_COMPACT_DIMS", default=256)
INDEX_COMPACT_MIN_ITEMS = env.int("INDEX_COMPACT_MIN_ITEMS", default=100_000)
# Index changes go to a journal every process replays; a snapshot (the whole index file) is
# written once this many changes (or this fraction of the index) piled up, or when the last one
# is this old and something changed.
INDEX_SNAPSHOT_CHANGES = env.int("INDEX_SNAPSHOT_CHANGES", default=2000)
INDEX_SNAPSHOT_FRACTION = env.float("INDEX_SNAPSHOT_FRACTION", default=0.05)
INDEX_SNAPSHOT_SECONDS = env.float("INDEX_SNAPSHOT_SECONDS", default=600.0)
# How often a process's index reader looks at the journal between searches (0: only when a
# search asks): a web process keeps its index current even while no search reaches it.
INDEX_FOLLOW_SECONDS = env.float("INDEX_FOLLOW_SECONDS", default=0.2)
# An index of at least this many items is saved by a forked child (gallery/index/
# background_save.py): the writer goes on meanwhile. Below it a save takes well under a second.
INDEX_SNAPSHOT_BACKGROUND_MIN_ITEMS = env.int("INDEX_SNAPSHOT_BACKGROUND_MIN_ITEMS", default=50_000)
SEARCH_DEFAULT_K = 20
SEARCH_MAX_K = env.int("SEARCH_MAX_K", default=100)
BROWSE_PAGE_SIZE = 48

# Celery: Redis broker, JSON only, late acks, one task at a time per process.
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 3
# A broker that accepts connections but never answers must not hold a web request: every
# socket has a deadline, and a publish is tried twice at most; an upload whose task could
# not be sent answers anyway and is queued again by recovery (gallery/services/recovery.py).
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "visibility_timeout": 3600,
    "socket_connect_timeout": 2,
    "socket_timeout": 2,
    # A worker's queues are read in the order it names them (`-Q embed,embed_bulk`): what a
    # visitor waits on before bulk work (gallery/queues.py). The default round robin would
    # take one bulk batch between two uploads.
    "queue_order_strategy": "priority",
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded broker used when no Redis is available (see `manage.py runapp`).
    _broker_dir = Path(env("BROKER_DIR", default=str(VAR_DIR / "broker")))
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Time limits per queue (gallery/queues.py), none globally: training must not die at 5 minutes.
CELERY_TASK_ANNOTATIONS = queues.celery_annotations()
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=3_000_000)
CELERY_TASK_DEFAULT_QUEUE = queues.EMBED
# Beat (embedded in the embed worker by `runapp`) runs the safety net for lost tasks.
CELERY_BEAT_SCHEDULE = {
    "recover-lost-work": {"task": queues.task_path("recover_lost_work"), "schedule": 30.0},
    # The index holds exactly the searchable items (an update lost with the broker is redone).
    "index-reconcile": {"task": queues.task_path("index_reconcile"), "schedule": 120.0},
    # Searchable images that lack the copy channel's vector or hash get them, a batch at a time.
    "backfill": {"task": queues.task_path("images_backfill"), "schedule": 60.0},
}
# Which task runs on which queue: gallery/queues.py (long runs never hold up uploads).
CELERY_TASK_ROUTES = queues.celery_routes()

# LOG_FORMAT=json: one JSON object per line (time, level, logger, message, exception), for a
# log collector; the default is plain text.
LOG_FORMAT = env("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            **({"formatter": "json"} if LOG_FORMAT == "json" else {}),
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # faiss names every CPU build it tries on import.
    "loggers": {"django.server": {"level": "WARNING"}, "faiss.loader": {"level": "WARNING"}},
}


# Per-client rate limits (gallery/throttles.py): "N/s|min|hour|day", or "off". The counts
# live in the cache: Redis when the broker is Redis (shared by every web process), else memory.
def _rate(name: str, default: str) -> str | None:
    value = env(f"THROTTLE_{name.upper()}", default=default)
    return None if value.lower() in ("", "off", "none", "0") else value


THROTTLE_RATES = {
    "search": _rate("search", "120/min"),
    "url": _rate("url", "20/min"),
    "upload": _rate("upload", "30/min"),
    "report": _rate("report", "10/hour"),
}
# /metrics: with a token, Prometheus sends it as a bearer; without, only loopback and private
# addresses may scrape.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
NINJA_NUM_PROXIES = 1 if env.bool("BEHIND_PROXY", default=False) else 0  # X-Forwarded-For is not trusted
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env("CACHE_URL", default=REDIS_URL),
        }
        if CELERY_BROKER_URL.startswith("redis")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Moderation: "post" (uploads appear at once and can be hidden) or "pre" (public uploads wait
# for staff approval). Staff uploads and imports are always approved.
MODERATION = env("MODERATION", default="post")

# Bulk imports: server folders and manifests must lie under IMPORT_ROOT; uploaded ZIPs are
# streamed to IMPORT_UPLOAD_DIR.
IMPORT_ROOT = Path(env("IMPORT_ROOT", default=str(VAR_DIR / "import-root")))
IMPORT_UPLOAD_DIR = Path(env("IMPORT_UPLOAD_DIR", default=str(VAR_DIR / "imports")))
IMPORT_MAX_TOTAL_BYTES = env.int("IMPORT_MAX_TOTAL_BYTES", default=50 * 1024**3)
IMPORT_MAX_COMPRESSION_RATIO = env.int("IMPORT_MAX_COMPRESSION_RATIO", default=100)
IMPORT_STALL_SECONDS = env.int("IMPORT_STALL_SECONDS", default=45)
FILE_UPLOAD_TEMP_DIR = env("FILE_UPLOAD_TEMP_DIR", default=None)
