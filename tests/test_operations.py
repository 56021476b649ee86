"""Operations endpoints: liveness, readiness (database, broker, index), Prometheus metrics,
JSON logs."""

import json

import pytest
from django.test import Client

from gallery import services
from tests.helpers import embed_and_index
from tests.images import make_image_bytes

pytestmark = pytest.mark.django_db


def test_liveness_asks_nothing():
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_ready_when_database_broker_and_index_serve(clean_index, redis_url):
    client = Client()
    body = client.get("/readyz").json()  # an empty gallery: nothing to load, ready
    assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "index": "ok"}}
    image, _ = services.image_create(data=make_image_bytes(1))
    embed_and_index(image.pk)
    assert client.get("/readyz").status_code == 200


def test_not_ready_without_broker_or_with_an_index_that_cannot_load(clean_index, redis_url, settings):
    from gallery import selectors
    from searchsite.celery import app

    image, _ = services.image_create(data=make_image_bytes(2))
    embed_and_index(image.pk)
    client = Client()
    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        answer = client.get("/readyz")
    finally:
        app.conf.broker_url = previous
    assert answer.status_code == 503
    assert answer.json()["checks"]["broker"].startswith("unreachable")
    (clean_index / "index.bin").write_bytes(b"not an index")  # and the index is broken
    selectors.index_readers_forget()  # as a process starting now
    checks = client.get("/readyz").json()["checks"]
    assert checks["index"].startswith("not loaded") and checks["broker"] == "ok"


def test_metrics_give_latency_by_endpoint_queues_statuses_and_the_index(clean_index, redis_url, settings):
    image, _ = services.image_create(data=make_image_bytes(3))
    embed_and_index(image.pk)
    client = Client()
    assert client.get(f"/api/images/{image.pk}").status_code == 200
    text = client.get("/metrics").content.decode()  # the test client comes from 127.0.0.1
    assert 'gallery_request_seconds_count{endpoint="api/images/<image_id>",method="GET",status="2xx"}' in text
    assert 'gallery_images{status="indexed"} 1.0' in text
    assert 'gallery_queue_depth{queue="index"}' in text
    assert "gallery_index_items{model=" in text and "gallery_index_journal_seq{model=" in text
    assert Client(REMOTE_ADDR="93.184.216.34").get("/metrics").status_code == 403  # not from outside
    settings.METRICS_TOKEN = "s3cret-token"
    outside = Client(REMOTE_ADDR="93.184.216.34")
    assert outside.get("/metrics").status_code == 403
    assert outside.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


def test_json_logs_are_one_object_per_line(tmp_path):
    """LOG_FORMAT=json: what the app logs comes out as JSON lines (a real process, its settings)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "import logging; logging.getLogger('gallery.index').error('index %s unusable', 'x')"
    env = {**os.environ, "LOG_FORMAT": "json", "VAR_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(
        line["level"] == "ERROR"
        and line["logger"] == "gallery.index"
        and line["message"] == "index x unusable"
        for line in lines
    ), done.stderr
