"""python manage.py import_images PATH [--category NAME] [--no-wait]"""

import time
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery import services
from gallery.imaging import ImageRejected
from gallery.importing import iter_entries
from gallery.models import Image


class Command(BaseCommand):
    help = (
        "Import a folder or ZIP of images (sub-folder names become categories, file names the "
        "titles) and, unless --no-wait, return once every imported image is searchable."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--category", default="", help="Category for every image (overrides folder names).")
        parser.add_argument("--no-wait", action="store_true", help="Return once stored, before indexing ends.")
        parser.add_argument("--timeout", type=float, default=0, help="Give up waiting after this many seconds.")

    def handle(self, path, category, no_wait, timeout, **options):
        source = Path(path)
        if not source.exists():
            raise CommandError(f"{source} does not exist.")
        try:  # a first pass over the names only, for the progress bar's total
            total = sum(1 for _ in iter_entries(source, category=category, max_bytes=settings.UPLOAD_MAX_BYTES))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        entries = iter_entries(source, category=category, max_bytes=settings.UPLOAD_MAX_BYTES)

        ids, batch, errors, duplicates = [], [], [], 0
        show = options["verbosity"] > 0
        with tqdm(total=total, desc="Importing", unit="img", disable=not show) as bar:
            for entry in entries:
                bar.update(1)
                if entry.error:
                    errors.append((entry.path, entry.error))
                    continue
                try:
                    image, created = services.image_create(
                        data=entry.read(),
                        title=PurePosixPath(entry.path).stem,
                        category=entry.category,
                        original_name=entry.path,
                        enqueue=False,
                    )
                except ImageRejected as exc:
                    errors.append((entry.path, str(exc)))
                    continue
                ids.append(image.pk)
                if created:
                    batch.append(image.pk)
                else:
                    duplicates += 1
                if len(batch) >= settings.EMBED_BATCH_SIZE:
                    services.enqueue_embedding(batch)
                    batch = []
        if batch:
            services.enqueue_embedding(batch)

        for name, error in errors:
            self.stderr.write(f"skipped {name}: {error}")
        self.stdout.write(
            f"Imported {len(ids) - duplicates} new images, {duplicates} already present, {len(errors)} refused."
        )
        if no_wait or not ids:
            return
        self._wait_until_searchable(ids, timeout, show)

    def _wait_until_searchable(self, ids, timeout, show):
        started = last_progress = time.monotonic()
        done_before, warned = -1, False
        with tqdm(total=len(ids), desc="Indexing", unit="img", disable=not show) as bar:
            while True:
                pending = Image.objects.filter(pk__in=ids, status=Image.Status.PROCESSING).count()
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
        failed = Image.objects.filter(pk__in=ids, status=Image.Status.FAILED)
        for image in failed:
            self.stderr.write(f"failed {image.original_name}: {image.error}")
        self.stdout.write(f"All {len(ids) - failed.count()} images are searchable ({failed.count()} failed).")
