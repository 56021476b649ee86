"""Near-duplicate scans: started from the staff page, run by the real worker, groups stored and
paged; items hidden since the scan drop out."""

import time

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery import selectors, services
from gallery.models import DuplicateGroupRow, DuplicateScan, Image
from tests.conftest import wait_for_status
from tests.helpers import api_upload
from tests.images import encode, make_picture


def _copies(client, seeds):
    """Each seed's picture and a small re-compressed copy of it, uploaded."""
    ids = []
    for seed in seeds:
        original = api_upload(client, seed).json()["id"]
        copy = encode(make_picture(seed).resize((360, 270)), "JPEG", quality=50)
        ids.append(
            (original, client.post("/api/images", {"image": SimpleUploadedFile("c.jpg", copy)}).json()["id"])
        )
    return ids


def test_a_scan_runs_on_the_worker_and_its_groups_are_paged(pipeline, admin_user, settings):
    client = Client()
    pairs = _copies(client, (301, 302, 303))
    wait_for_status([pk for pair in pairs for pk in pair])
    staff = Client()
    staff.force_login(admin_user)
    page = staff.get(reverse("gallery:duplicates")).content.decode()
    assert "No scan has finished yet" in page
    answer = staff.post(reverse("gallery:duplicates-scan"))  # CSRF is not enforced by the test client
    assert answer.status_code == 302
    deadline = time.monotonic() + 60
    while not DuplicateScan.objects.filter(state=DuplicateScan.State.DONE).exists():
        assert time.monotonic() < deadline, "the scan never finished"
        assert not DuplicateScan.objects.filter(state=DuplicateScan.State.FAILED).exists()
        time.sleep(0.3)
    scan = DuplicateScan.objects.get()
    assert scan.items == 6 and scan.started_by == admin_user
    stored = [[pk for pk, _ in row.members] for row in DuplicateGroupRow.objects.filter(scan=scan)]
    assert sorted(stored) == sorted([list(pair) for pair in pairs])
    first = staff.get(reverse("gallery:duplicates"), {"page": 1}).content.decode()
    assert first.count('class="panel dup-group"') == 3
    page, groups = selectors.duplicate_groups_page(scan, 2, per_page=2)
    assert page.number == 2 and len(groups) == 1
    Image.objects.filter(pk=pairs[0][1]).update(status=Image.Status.HIDDEN)  # hidden since the scan
    _, groups = selectors.duplicate_groups_page(scan, 1, per_page=10)
    assert len(groups) == 2 and pairs[0][0] not in [im.pk for g in groups for im in g.images]
    again = services.duplicate_scan_start(user=admin_user)  # a second scan replaces the first
    deadline = time.monotonic() + 60
    while DuplicateScan.objects.get(pk=again.pk).state != DuplicateScan.State.DONE:
        assert time.monotonic() < deadline, "the second scan never finished"
        time.sleep(0.3)
    assert list(DuplicateScan.objects.values_list("pk", flat=True)) == [again.pk]
    assert DuplicateGroupRow.objects.filter(scan=again).count() == 2
