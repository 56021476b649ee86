"""Train an embedding model on the gallery (its categories as labels) or on a folder / ZIP
whose sub-folder names are the categories (the `train/` part of an archive that has one).

    manage.py train_model --kind metric --bits 48 --minutes 40 --data ../shared/datasets/cifar10-jpg.zip
    manage.py train_model --kind pretrained --backbone resnet18 --pooling gem
    manage.py train_model --resume metric-v1

Runs here and prints progress; `--background` queues it on the Celery `train` queue instead.
The last line printed is one JSON object with the model's name and training figures."""

import json
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery import selectors, services
from gallery.learning.spec import OPTIONS, TRAINED_KINDS, Kind
from gallery.models import ModelVersion

COMMAND_LINE_OPTIONS = tuple(option for option in OPTIONS if option.on_command_line)


class Command(BaseCommand):
    help = f"Train an embedding model ({', '.join(TRAINED_KINDS)}) or register a pretrained one."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--kind", choices=[kind.value for kind in Kind])
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
        for option in COMMAND_LINE_OPTIONS:  # the training options (learning.spec), default: the kind's
            parser.add_argument(
                option.flag, type=option.type, choices=option.choices or None, help=option.help or None
            )
        parser.add_argument("--resume", metavar="VERSION", help="Continue a cancelled, failed or cut run.")
        parser.add_argument("--background", action="store_true", help="Queue on the train worker and return.")

    def handle(self, *args: Any, **options: Any) -> None:
        version = self._reopened(options["resume"]) if options["resume"] else self._created(options)
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
        self._train_here(version)

    def _reopened(self, name: str) -> ModelVersion:
        version = selectors.model_version_get(name)
        if version is None:
            raise CommandError(f"No model version {name!r}")
        services.model_train_reopen(version)
        return version

    def _created(self, options: dict[str, Any]) -> ModelVersion:
        if not options["kind"]:
            raise CommandError("Give --kind (or --resume VERSION)")
        extra = {o.name: options[o.name] for o in COMMAND_LINE_OPTIONS if options.get(o.name) is not None}
        if options["kind"] == "pretrained":
            extra = {"backbone": options["backbone"], "pooling": options["pooling"]}
        try:
            return services.model_version_create(
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

    def _train_here(self, version: ModelVersion) -> None:
        """Trains in this process, printing progress every 10 s, then the figures as JSON."""
        started = time.monotonic()
        last = [0.0]

        def show(progress: dict[str, Any]) -> None:
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
