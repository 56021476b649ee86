"""Bulk imports from the admin, with real workers: progress, cancel, permissions, and a job
that survives a killed worker and a lost queue without losing or doubling anything."""

import io
import signal
import time
import zipfile
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import User
from django.urls import reverse

from gallery import services
from gallery.models import Image, ImportItem, ImportJob
from tests.conftest import start_worker, stop_worker
from tests.images import make_image_bytes


def make_zip(count, start=0, extra=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(start, start + count):
            zf.writestr(
                f"{'odd' if i % 2 else 'even'}/item-{i}.jpg", make_image_bytes(1000 + i, size=(96, 72))
            )
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    buf.seek(0)
    buf.name = "catalogue.zip"
    return buf


@pytest.fixture
def staff_client(client, db):
    user = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def wait_job(job, predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if predicate(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job.pk} stuck in {job.state}")


def test_admin_zip_import_reports_progress_and_refusals(pipeline, staff_client, settings, session_dirs):
    settings.IMPORT_UPLOAD_DIR = session_dirs["base"] / "imports"  # where the worker looks too
    archive = make_zip(6, extra={"../evil.jpg": make_image_bytes(1), "readme.txt": "hi"})
    response = staff_client.post(
        reverse("admin:gallery_importjob_add"), {"source_kind": "zip", "archive": archive, "category": ""}
    )
    assert response.status_code == 302
    job = ImportJob.objects.get()
    assert job.total == 8 and job.started_by.username == "staff"
    progress_url = reverse("admin:gallery_importjob_progress", args=[job.pk])
    deadline = time.monotonic() + 120
    while True:
        progress = staff_client.get(progress_url).json()
        if progress["state"] == "done" and progress["searchable"] == 6:
            break
        assert time.monotonic() < deadline, progress
        time.sleep(0.5)
    assert (progress["imported"], progress["failed"], progress["duplicates"], progress["percent"]) == (
        6,
        2,
        0,
        100.0,
    )
    page = staff_client.get(reverse("admin:gallery_importjob_change", args=[job.pk])).content.decode()
    assert "unsafe path" in page and "readme.txt" in page and 'id="import-bar"' in page
    assert set(Image.objects.values_list("category", flat=True)) == {"odd", "even"}
    assert not Path(job.source_path).exists()  # the uploaded archive is deleted once done
    # the same archive again adds nothing twice
    staff_client.post(reverse("admin:gallery_importjob_add"), {"source_kind": "zip", "archive": make_zip(6)})
    again = wait_job(ImportJob.objects.latest("created_at"), lambda j: j.state == "done")
    assert again.items.filter(state="duplicate").count() == 6 and Image.objects.count() == 6


def test_folder_import_must_stay_under_the_import_root(staff_client, settings, tmp_path):
    settings.IMPORT_ROOT = tmp_path / "root"
    (tmp_path / "root" / "cat").mkdir(parents=True)
    response = staff_client.post(
        reverse("admin:gallery_importjob_add"), {"source_kind": "folder", "path": "../"}
    )
    assert "outside the import root" in response.content.decode()
    response = staff_client.post(
        reverse("admin:gallery_importjob_add"), {"source_kind": "folder", "path": "cat"}
    )
    assert response.status_code == 302 and ImportJob.objects.count() == 1


def test_only_staff_reach_imports(client, db):
    User.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    for url in (reverse("admin:gallery_importjob_add"), reverse("admin:gallery_importjob_changelist")):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_cancel_stops_a_job(staff_client, tmp_path, django_capture_on_commit_callbacks):
    (tmp_path / "cat").mkdir()
    for i in range(3):
        (tmp_path / "cat" / f"{i}.jpg").write_bytes(make_image_bytes(i))
    job = services.import_job_create(kind="folder", path=tmp_path / "cat")
    staff_client.post(reverse("admin:gallery_importjob_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.state == "cancelled"
    pending = list(job.items.values_list("pk", flat=True))
    assert services.import_job_process(job.pk, pending) == 0  # queued batches do nothing
    assert Image.objects.count() == 0


def test_job_survives_a_killed_worker_and_a_lost_queue(
    transactional_db, redis_url, session_dirs, clean_index, tmp_path
):
    """A real worker is killed (SIGKILL) mid-job and the queue is wiped, as after a Redis
    restart; a new worker resumes the job: every file imported once, all searchable."""
    url = redis_url.rsplit("/", 1)[0] + "/13"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    (tmp_path / "cat").mkdir()
    for i in range(160):
        (tmp_path / "cat" / f"{i}.jpg").write_bytes(make_image_bytes(2000 + i, size=(96, 72)))
    job = services.import_job_create(
        kind="folder", path=tmp_path / "cat"
    )  # not dispatched: the worker resumes it
    first = start_worker(url, session_dirs, tmp_path / "w1.log", "killed")
    try:
        wait_job(job, lambda j: j.items.exclude(state="pending").count() >= 40, timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert job.items.filter(state="pending").exists(), "the job finished before the kill; make it larger"
    broker.flushdb()  # the queued batches are lost too
    second = start_worker(url, session_dirs, tmp_path / "w2.log", "resumed")
    try:
        wait_job(job, lambda j: j.state == "done", timeout=180)
        deadline = time.monotonic() + 120
        while Image.objects.exclude(status="indexed").exists():
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        stop_worker(second)
    assert job.items.filter(state=ImportItem.State.IMPORTED).count() == 160
    assert Image.objects.count() == 160
    assert not job.items.exclude(state=ImportItem.State.IMPORTED).exists()


def test_import_job_pages_follow_the_model_permissions(client, db, tmp_path):
    """Staff without the import permissions see no job; with view only, they cannot cancel it."""
    from django.contrib.auth.models import Permission

    (tmp_path / "cat").mkdir()
    job = services.import_job_create(kind="folder", path=tmp_path / "cat")
    member = User.objects.create_user("member", password="pw", is_staff=True)
    client.force_login(member)
    pages = [
        reverse("admin:gallery_importjob_change", args=[job.pk]),
        reverse("admin:gallery_importjob_progress", args=[job.pk]),
    ]
    cancel = reverse("admin:gallery_importjob_cancel", args=[job.pk])
    assert all(client.get(url).status_code == 403 for url in pages)
    assert client.post(cancel).status_code == 403
    member.user_permissions.add(Permission.objects.get(codename="view_importjob"))
    client.force_login(User.objects.get(pk=member.pk))
    assert all(client.get(url).status_code == 200 for url in pages)
    assert client.post(cancel).status_code == 403
    member.user_permissions.add(Permission.objects.get(codename="change_importjob"))
    client.force_login(User.objects.get(pk=member.pk))
    assert client.post(cancel).status_code == 302
    job.refresh_from_db()
    assert job.state == "cancelled"
