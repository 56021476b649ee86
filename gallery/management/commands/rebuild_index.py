from django.core.management.base import BaseCommand

from gallery import services


class Command(BaseCommand):
    help = "Rebuild the HNSW index from the embeddings stored in the database and switch to it atomically."

    def handle(self, **options):
        count = services.index_rebuild()
        self.stdout.write(f"Index rebuilt with {count} images.")
