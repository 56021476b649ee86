"""Evaluate a model version (default: the active one) and store the figures with it.

    manage.py evaluate_model metric-48bit-v1 --protocol cifar10 --data ../shared/datasets/cifar10-jpg.zip
    manage.py evaluate_model --protocol neardup --data ../shared/datasets/fashion-products-6k.zip

Prints one JSON line: mAP@1000, mAP@all, precision@10 (and Hamming-ranking figures for hash
models), or recall@1/@10 for neardup; the confusion matrix picture is saved beside the model."""

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery import selectors, services
from gallery.learning.protocols import PROTOCOLS


class Command(BaseCommand):
    help = "Evaluate a model version on a retrieval protocol (cifar10, neardup)."

    def add_arguments(self, parser):
        parser.add_argument("version", nargs="?", help="Name or id; default: the active model.")
        parser.add_argument("--protocol", choices=PROTOCOLS, default="cifar10")
        parser.add_argument("--data", required=True, help="The dataset archive or folder.")
        parser.add_argument("--db-limit", type=int, help="Use a random sample of the database (catalogue).")
        parser.add_argument("--queries", type=int, help="Use a random sample of the queries.")

    def handle(self, **options):
        if options["version"]:
            version = selectors.model_version_get(options["version"])
            if version is None:
                raise CommandError(f"No model version {options['version']!r}")
        else:
            version = selectors.model_version_active() or services.model_version_default()
        last: list[tuple[object, int] | None] = [None]

        def report(info: dict[str, Any]) -> None:
            key = (info.get("stage"), int(10 * info.get("done", 0) / max(1, info.get("total", 1))))
            if key != last[0]:
                last[0] = key
                print(json.dumps(info), file=sys.stderr, flush=True)

        try:
            result = services.model_evaluate(
                version.pk,
                options["protocol"],
                options["data"],
                limits={"db": options["db_limit"], "queries": options["queries"]},
                report=report,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps({"model": version.name, **result}))
