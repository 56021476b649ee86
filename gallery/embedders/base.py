"""The interface every embedder implements, and the shared torch plumbing."""

import abc

import numpy as np
import torch
from django.conf import settings
from PIL import Image, ImageFilter

from ..imaging import flatten


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


class TorchEmbedder(Embedder):
    """A torch module + preprocessing; batches, runs on CPU without autograd."""

    image_size: int = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    batch_size = 32
    blur_radius = 0.0

    def __init__(self):
        torch.set_num_threads(max(1, settings.TORCH_THREADS))
        self.model = self.build_model().eval()
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._std = np.asarray(self.std, dtype=np.float32)

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The network, with its weights loaded."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def preprocess(self, im: Image.Image) -> np.ndarray:
        """The whole picture, squashed to a square: crops would lose the edges of products."""
        im = flatten(im).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if self.blur_radius:
            im = im.filter(ImageFilter.GaussianBlur(self.blur_radius))
        a = np.asarray(im, dtype=np.float32) / 255.0
        return (a - self._mean) / self._std

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
            f = self.features(x)
            f = torch.nn.functional.normalize(f.float(), dim=1)
            out[start : start + len(batch)] = f.numpy()
        return out
