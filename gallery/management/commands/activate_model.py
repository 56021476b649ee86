"""Switch searches to a model version: embed every image with it, build its index beside
the active one, switch atomically. Searches keep using the current model until then.

    manage.py activate_model metric-v1            # here, waiting until the switch
    manage.py activate_model metric-v1 --background"""

from django.core.management.base import BaseCommand, CommandError

from gallery import selectors, services


class Command(BaseCommand):
    help = "Activate a model version (re-embeds the gallery, new index, atomic switch)."

    def add_arguments(self, parser):
        parser.add_argument("version")
        parser.add_argument("--background", action="store_true", help="Queue on the train worker and return.")

    def handle(self, **options):
        services.model_version_default()  # so the current default can be re-activated later
        version = selectors.model_version_get(options["version"])
        if version is None:
            raise CommandError(f"No model version {options['version']!r}")
        try:
            services.model_activate_start(version, dispatch_task=options["background"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["background"]:
            self.stdout.write(f"Activation of {version.name} queued.")
            return
        version = services.model_activate(version.pk)
        if not version.is_active:
            raise CommandError(f"{version.name} was not activated: {version.activation_progress}")
        self.stdout.write(
            f"{version.name} is active ({version.activation_progress.get('done')} images in its index)."
        )
