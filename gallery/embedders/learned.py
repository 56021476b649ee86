"""Embedder for a model trained here (`gallery.learning`): loads its `model.pt` (spec +
weights), so it needs neither the database nor the network."""

import numpy as np
import torch
from django.conf import settings

from ..imaging import flatten
from ..learning.trainer import load_model, pixels, to_tensor
from .base import Embedder


class LearnedEmbedder(Embedder):
    batch_size = 64

    def __init__(self, name: str, path):
        torch.set_num_threads(max(1, settings.TORCH_THREADS))
        self.name = name
        self.net = load_model(path)
        self.spec = self.net.spec
        self.dim = self.net.dim
        self.image_size = int(self.spec["image_size"])

    @torch.inference_mode()
    def embed(self, images) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.stack([pixels(flatten(im), self.image_size) for im in chunk])
            out[start : start + len(chunk)] = self.net(to_tensor(batch, self.spec)).numpy()
        return out

    @torch.inference_mode()
    def reconstruction_mse(self, images) -> float | None:
        """Autoencoders: mean squared error per pixel and channel, pixels in [-0.5, 0.5]."""
        if self.spec["kind"] != "autoencoder":
            return None
        total, count = 0.0, 0
        for start in range(0, len(images), 256):
            chunk = images[start : start + 256]
            x = to_tensor(np.stack([pixels(flatten(im), self.image_size) for im in chunk]), self.spec)
            total += float(((self.net.decode(self.net.encode(x)) - x) ** 2).sum())
            count += x.numel()
        return total / count
