"""Train an embedding model on the gallery (its categories as labels) or on a folder / ZIP
whose sub-folder names are the categories (the `train/` part of an archive that has one).

    manage.py train_model --kind metric --bits 48 --minutes 40 --data ../shared/datasets/cifar10-jpg.zip
    manage.py train_model --kind pretrained --backbone resnet18 --pooling gem
    manage.py train_model --resume metric-v1

Runs here and prints progress; `--background` queues it on the Celery `train` queue instead.
The last line printed is one JSON object with the model's name and training figures."""

import json
import time

from django.core.management.base import BaseCommand, CommandError

from gallery import selectors, services
from gallery.models import ModelVersion

OPTION_NAMES = (
    "dim",
    "image_size",
    "frozen_stages",
    "arch",
    "batch_size",
    "lr",
    "noise",
    "margin",
    "temperature",
    "views",
    "width",
    "max_images",
)


class Command(BaseCommand):
    help = (
        "Train an embedding model (autoencoder, metric, triplet, contrastive) or register a pretrained one."
    )

    def add_arguments(self, parser):
        parser.add_argument("--kind", choices=[k for k, _ in ModelVersion.Kind.choices])
        parser.add_argument(
            "--data", default="", help="Folder or ZIP (sub-folders = categories); default: the gallery."
        )
        parser.add_argument("--minutes", type=float, default=10.0, help="Training time budget.")
        parser.add_argument("--epochs", type=float, help="Stop after this many epochs (if sooner).")
        parser.add_argument("--bits", type=int, default=0, help="Learn binary hash codes of this many bits.")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--backbone", default="", help="Pretrained kind: efficientnet_lite0, resnet18, ..."
        )
        parser.add_argument("--pooling", default="avg", choices=["avg", "gem"])
        parser.add_argument("--dim", type=int)
        parser.add_argument("--image-size", type=int)
        parser.add_argument("--frozen-stages", type=int)
        parser.add_argument("--arch", choices=["lite0", "small_cnn"])
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--noise", type=float, help="Autoencoder: denoising, Gaussian noise of this std.")
        parser.add_argument("--margin", type=float)
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--views", type=int, help="Augmented views prepared per image.")
        parser.add_argument("--width", type=int)
        parser.add_argument("--max-images", type=int, help="Train on a random sample of this many images.")
        parser.add_argument("--resume", metavar="VERSION", help="Continue a cancelled, failed or cut run.")
        parser.add_argument("--background", action="store_true", help="Queue on the train worker and return.")

    def handle(self, **options):
        if options["resume"]:
            version = selectors.model_version_get(options["resume"])
            if version is None:
                raise CommandError(f"No model version {options['resume']!r}")
            services.model_train_reopen(version)
        else:
            if not options["kind"]:
                raise CommandError("Give --kind (or --resume VERSION)")
            extra = {name: options[name] for name in OPTION_NAMES if options.get(name) is not None}
            if options["kind"] == "pretrained":
                extra = {"backbone": options["backbone"], "pooling": options["pooling"]}
            try:
                version = services.model_version_create(
                    options["kind"],
                    data=options["data"],
                    minutes=options["minutes"],
                    epochs=options["epochs"],
                    bits=options["bits"],
                    options=extra,
                    name=options["name"],
                    start=options["background"],
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        if version.kind == ModelVersion.Kind.PRETRAINED:
            self.stdout.write(
                json.dumps({"model": version.name, "kind": version.kind, "state": version.state})
            )
            return
        if options["background"]:
            if options["resume"]:
                services.model_train_start(version)
            self.stdout.write(f"Queued {version.name} on the train worker.")
            return
        started = time.monotonic()
        last = [0.0]

        def show(progress):
            if time.monotonic() - last[0] >= 10 or progress["stage"] == "done":
                last[0] = time.monotonic()
                self.stderr.write(f"[{time.monotonic() - started:7.0f}s] {json.dumps(progress)}")

        self.stderr.write(f"Training {version.name} ({version.kind}) in {version.workdir}")
        version = services.model_train(version.pk, on_progress=show)
        if version.state != ModelVersion.State.READY:
            raise CommandError(f"{version.name}: {version.state} {version.error}")
        self.stdout.write(
            json.dumps({"model": version.name, "kind": version.kind, "bits": version.bits, **version.metrics})
        )
