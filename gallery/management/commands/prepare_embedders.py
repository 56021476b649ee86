from django.core.management.base import BaseCommand

from gallery import services


class Command(BaseCommand):
    help = (
        "Load the served models once: their ONNX graphs are exported, checked and recorded, so "
        "the web embeds queries without torch (runapp runs this before starting the web)."
    )

    def handle(self, **options):
        for name, runtime in services.embedders_prepare().items():
            self.stdout.write(f"{name}: {runtime}")
