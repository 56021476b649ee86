"""What every embedder is (no torch here: a process may embed its queries without it)."""

import abc

import numpy as np
from PIL import Image


class Embedder(abc.ABC):
    """Maps images to L2-normalised float32 vectors; cosine similarity = dot product."""

    name: str
    dim: int

    @abc.abstractmethod
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One vector per image, for queries."""

    def embed_gallery(self, images: list[Image.Image]) -> np.ndarray:
        """Vectors for gallery items (may differ from query vectors, e.g. by augmentation)."""
        return self.embed(images)
