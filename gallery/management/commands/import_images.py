"""python manage.py import_images PATH [--category NAME] [--no-wait]

The same import service as the admin's bulk import: the source is listed into an ImportJob,
its files are stored here batch by batch (progress bar), and the workers embed and index them."""

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery import selectors, services
from gallery.importing import SourceError, guess_kind
from gallery.models import Image, ImportJob


class Command(BaseCommand):
    help = (
        "Import a folder, a ZIP or a manifest (.csv/.jsonl) of images (sub-folder names become "
        "categories, file names the titles) and, unless --no-wait, return once every imported "
        "image is searchable."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument(
            "--category", default="", help="Category for every image (overrides folder names)."
        )
        parser.add_argument(
            "--no-wait", action="store_true", help="Return once stored, before indexing ends."
        )
        parser.add_argument(
            "--timeout", type=float, default=0, help="Give up waiting after this many seconds."
        )

    def handle(self, path, category, no_wait, timeout, **options):
        source = Path(path).expanduser()
        if not source.exists():
            raise CommandError(f"{source} does not exist.")
        try:
            job = services.import_job_create(
                kind=guess_kind(source), path=source.resolve(), category=category
            )
        except SourceError as exc:
            raise CommandError(str(exc)) from exc
        show = options["verbosity"] > 0
        pending = selectors.import_job_pending_item_ids(job)
        size = settings.EMBED_BATCH_SIZE
        with tqdm(total=job.total, desc="Importing", unit="img", disable=not show) as bar:
            bar.update(job.total - len(pending))
            for start in range(0, len(pending), size):
                services.import_job_process(job.pk, pending[start : start + size], embed=False)
                bar.update(min(size, len(pending) - start))
        job.refresh_from_db()
        progress = selectors.import_job_progress(job)
        for item in selectors.import_job_failures(job, limit=job.total):
            self.stderr.write(f"skipped {item.path}: {item.error}")
        self.stdout.write(
            f"Imported {progress['imported']} new images, {progress['duplicates']} already present, "
            f"{progress['failed']} refused (import job {job.pk})."
        )
        ids = selectors.import_job_image_ids(job)
        if no_wait or not ids or job.state != ImportJob.State.DONE:
            return
        self._wait_until_searchable(ids, timeout, show)

    def _wait_until_searchable(self, ids, timeout, show):
        started = last_progress = time.monotonic()
        done_before, warned = -1, False
        with tqdm(total=len(ids), desc="Indexing", unit="img", disable=not show) as bar:
            while True:
                pending = selectors.images_status_counts(ids).get(Image.Status.PROCESSING, 0)
                done = len(ids) - pending
                bar.update(done - bar.n)
                if pending == 0:
                    break
                now = time.monotonic()
                if done != done_before:
                    done_before, last_progress = done, now
                elif not warned and now - last_progress > 60:
                    warned = True
                    self.stderr.write(
                        "No indexing progress for a minute: is a Celery worker running? (`make run` starts one)"
                    )
                if timeout and now - started > timeout:
                    raise CommandError(f"{pending} images are still being indexed after {timeout:.0f} s.")
                time.sleep(0.5)
        failed = selectors.images_with_errors(ids, Image.Status.FAILED)
        for image in failed:
            self.stderr.write(f"failed {image.original_name}: {image.error}")
        self.stdout.write(f"All {len(ids) - len(failed)} images are searchable ({len(failed)} failed).")
