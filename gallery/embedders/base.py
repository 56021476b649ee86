"""The interface every embedder implements, and the shared torch plumbing."""

import abc

import numpy as np
import torch
from django.conf import settings
from PIL import Image

from . import transforms


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
    normalisation = transforms.IMAGENET
    batch_size = 32
    blur_radius = 0.0

    def __init__(self) -> None:
        torch.set_num_threads(max(1, settings.TORCH_THREADS))
        self.model = self.build_model().eval()

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The network, with its weights loaded."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def preprocess(self, im: Image.Image) -> np.ndarray:
        """The whole picture, squashed to a square (`transforms.pixels`), blurred if the
        embedder asks for it."""
        return transforms.pixels(im, self.image_size, self.blur_radius)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            # NCHW in memory: the pretrained networks' vectors were measured on that layout
            x = transforms.to_tensor(batch, self.normalisation).contiguous()
            f = self.features(x)
            f = torch.nn.functional.normalize(f.float(), dim=1)
            out[start : start + len(batch)] = f.numpy()
        return out
