"""Embedder for a model trained here (`gallery.learning`): loads its `model.pt` (spec +
weights), so it needs neither the database nor the network, nor the training loop."""

import os

import numpy as np
import torch
from django.conf import settings
from PIL import Image

from ..learning.model_io import load_model
from ..learning.networks import ConvAutoencoder
from .interface import Embedder
from .onnx_query import QueryPreprocessing
from .onnx_runtime import fast_forward
from .transforms import pixels, to_tensor


class LearnedEmbedder(Embedder):
    batch_size = 64

    def __init__(self, name: str, path: str | os.PathLike[str]) -> None:
        torch.set_num_threads(max(1, settings.TORCH_THREADS))
        self.name = name
        self.net = load_model(path)
        self.spec = self.net.spec
        self.dim = self.net.dim
        self.image_size = int(self.spec["image_size"])
        norm = self.net.normalisation
        query = QueryPreprocessing(
            self.image_size, norm.mean, norm.std, 0.0, self.dim, weights_mtime_ns=os.stat(path).st_mtime_ns
        )
        self._forward, self.runtime = fast_forward(
            self.net, name=name, image_size=self.image_size, query=query
        )

    def _batch(self, images: list[Image.Image]) -> torch.Tensor:
        return to_tensor(np.stack([pixels(im, self.image_size) for im in images]), self.net.normalisation)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._forward(self._batch(chunk))
        return out

    @torch.inference_mode()
    def pca_reconstruction_mse(
        self, fit: list[Image.Image], images: list[Image.Image], sample: int = 10000
    ) -> float | None:
        """Autoencoders: the same error for PCA with as many components as the code has
        floats, fitted on `fit` (at most `sample` of them) — the baseline the autoencoder's
        error means something against."""
        if not isinstance(self.net, ConvAutoencoder):
            return None
        chosen = fit[:: max(1, len(fit) // sample)][:sample]
        train = torch.cat([self._batch(chosen[s : s + 256]).flatten(1) for s in range(0, len(chosen), 256)])
        mean = train.mean(dim=0, keepdim=True)
        _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
        basis = v[: self.net.dim].T  # pixels x components
        total, count = 0.0, 0
        for start in range(0, len(images), 256):
            x = self._batch(images[start : start + 256]).flatten(1) - mean
            total += float(((x @ basis @ basis.T - x) ** 2).sum())
            count += x.numel()
        return total / count

    @torch.inference_mode()
    def reconstruction_mse(self, images: list[Image.Image]) -> float | None:
        """Autoencoders: mean squared error per pixel and channel, pixels in [-0.5, 0.5]."""
        if not isinstance(self.net, ConvAutoencoder):
            return None
        total, count = 0.0, 0
        for start in range(0, len(images), 256):
            x = self._batch(images[start : start + 256])
            total += float(((self.net.decode(self.net.encode(x)) - x) ** 2).sum())
            count += x.numel()
        return total / count
