"""Shared fixtures. Pipeline tests use a real Redis and a real Celery worker process that
works on the test database (file-based SQLite, or PostgreSQL when DATABASE_URL says so)."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The shared datasets: beside the project, or where TEST_DATASETS_DIR says (a clone elsewhere,
# e.g. CI's, finds them at the workplace's usual place).
DATASETS = next(
    (
        p
        for p in (
            Path(os.environ.get("TEST_DATASETS_DIR", ROOT.parent / "shared" / "datasets")),
            ROOT.parent / "shared" / "datasets",
            Path("/work/shared/datasets"),
        )
        if p.is_dir()
    ),
    ROOT.parent / "shared" / "datasets",
)


@pytest.fixture(autouse=True)
def _isolated_files(settings, tmp_path_factory, request):
    """Media and the index live in one temporary folder per session (the worker shares it)."""
    base = request.getfixturevalue("session_dirs")
    settings.MEDIA_ROOT = base["media"]
    settings.INDEX_DIR = base["index"]
    settings.MODELS_DIR = base["models"]
    settings.ONNX_DIR = base["base"] / "onnx"  # as the worker's (VAR_DIR/onnx)
    # Rate limits are off (tests ask hundreds of times from one address) except where a
    # test turns them on; their counts live in this process's memory.
    settings.THROTTLE_RATES = dict.fromkeys(settings.THROTTLE_RATES)
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # In this process a search applies the index journal itself: most tests' rows are in a
    # transaction that a follower thread's own connection cannot see. The follower is tested
    # on its own (test_index_writer) and runs in every app the tests start as processes.
    settings.INDEX_FOLLOW_SECONDS = 0
    yield


@pytest.fixture(scope="session", autouse=True)
def _test_broker():
    """Tasks dispatched by tests go to the test Redis database, never the app's."""
    from searchsite.celery import app

    app.conf.broker_url = _redis_url()


@pytest.fixture(scope="session")
def session_dirs():
    base = Path(tempfile.mkdtemp(prefix="searchsite-test-"))
    dirs = {"media": base / "media", "index": base / "index", "models": base / "models", "base": base}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    yield dirs
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_index(session_dirs):
    """Start a test with no index on disk (the worker then rebuilds from the database)."""
    from gallery import selectors
    from gallery.embedders import forget_active_model

    for path in session_dirs["index"].glob("*"):
        if path.is_dir():
            shutil.rmtree(path)  # other models' indexes
        elif path.name != "write.lock":
            path.unlink()
    selectors.index_readers_forget()
    forget_active_model()
    yield session_dirs["index"]
    forget_active_model()


def _redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url():
    import redis

    url = _redis_url()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {url} ({exc}); pipeline tests need a real Redis.")
    client.flushdb()  # stale tasks of an earlier run
    return url


def _database_url(settings_dict) -> str:
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = settings_dict.get("USER") or "postgres"
        password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"No worker URL for {engine}")


def start_worker(
    broker_url: str,
    session_dirs,
    log_path: Path,
    name: str,
    pool: str = "solo",
    queues_consumed: tuple[str, ...] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A real `celery worker` process on the test database, consuming every queue (solo
    pool by default: one task at a time, so it is also the index's single writer; prefork
    where behaviour differs, as with time limits)."""
    from django.db import connection

    from gallery import queues

    env = os.environ.copy()
    env.update(
        DATABASE_URL=_database_url(connection.settings_dict),
        CELERY_BROKER_URL=broker_url,
        MEDIA_ROOT=str(session_dirs["media"]),
        INDEX_DIR=str(session_dirs["index"]),
        MODELS_DIR=str(session_dirs["models"]),
        VAR_DIR=str(session_dirs["base"]),
        **(extra_env or {}),
    )
    with open(log_path, "w") as log:  # the worker writes through its own copy
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "searchsite",
                "worker",
                "-Q",
                ",".join(queues_consumed or queues.ALL),
                "--pool",
                pool,
                "--concurrency",
                "1",
                "-n",
                f"{name}-{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while "ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"The Celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, redis_url, session_dirs):
    log_path = session_dirs["base"] / "worker.log"
    proc = start_worker(redis_url, session_dirs, log_path, "test")
    yield {"process": proc, "log": log_path}
    stop_worker(proc)


@pytest.fixture
def pipeline(transactional_db, celery_worker, clean_index):
    """Everything an upload needs to become searchable: a committed database, the worker."""
    return celery_worker


def wait_for_status(ids, status="indexed", timeout=90):
    from gallery.models import Image

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = dict(Image.objects.filter(pk__in=ids).values_list("pk", "status"))
        if all(statuses.get(i) == status for i in ids):
            return statuses
        time.sleep(0.2)
    errors = dict(Image.objects.filter(pk__in=ids).exclude(error="").values_list("pk", "error"))
    from django.conf import settings

    log_path = Path(settings.MEDIA_ROOT).parent / "worker.log"  # the session worker's (celery_worker)
    log = log_path.read_text()[-4000:] if log_path.exists() else ""
    raise AssertionError(
        f"Not all {status} after {timeout}s: {statuses}; errors {errors}\nWorker log:\n{log}"
    )


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared datasets are not beside the project).")
    return path


@pytest.fixture
def staff(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("mod", password="pw", is_staff=True)


@pytest.fixture
def token(staff):
    from gallery import services

    return services.api_token_issue(staff, "script")[1]


@pytest.fixture
def gallery(clean_index):
    """18 searchable images in three colour categories, indexed with the default model."""
    from gallery import services
    from gallery.models import Image
    from tests.helpers import upload_colour_gallery

    ids = upload_colour_gallery(6, seed=100)
    images = list(Image.objects.filter(pk__in=ids).order_by("pk"))
    services.images_embed(ids)
    services.index_sync()
    assert Image.objects.filter(status=Image.Status.INDEXED).count() == 18
    return images
