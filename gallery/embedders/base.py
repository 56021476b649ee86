"""The shared torch plumbing of the embedders (`Embedder`, their interface, is in `interface`)."""

import abc
import threading

import numpy as np
import torch
from django.conf import settings
from PIL import Image

from . import transforms
from .interface import Embedder
from .onnx_query import QueryPreprocessing
from .onnx_runtime import Forward, fast_forward


class TorchEmbedder(Embedder):
    """A torch module + preprocessing; batches, runs on CPU without autograd."""

    image_size: int = 224
    normalisation = transforms.IMAGENET
    batch_size = 32
    blur_radius = 0.0
    # Retrieval measured unchanged with the network in bfloat16 (`openvino_runtime`).
    bf16 = False

    def __init__(self) -> None:
        torch.set_num_threads(max(1, settings.TORCH_THREADS))
        self.model = self.build_model().eval()
        self._forward: Forward | None = None
        self._forward_lock = threading.Lock()
        self.runtime = ""  # what runs the network (`onnx_runtime.fast_forward`), once it has run

    def forward(self, x: torch.Tensor) -> np.ndarray:
        """`features` through the fastest runtime that agrees with eager PyTorch (chosen,
        and exported if need be, on first use)."""
        if self._forward is None:
            with self._forward_lock:
                if self._forward is None:
                    query = QueryPreprocessing(
                        self.image_size,
                        self.normalisation.mean,
                        self.normalisation.std,
                        self.blur_radius,
                        self.dim,
                    )
                    self._forward, self.runtime = fast_forward(
                        _Features(self),
                        name=self.name,
                        image_size=self.image_size,
                        query=query,
                        bf16=self.bf16,
                    )
        return self._forward(x)

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
            f = self.forward(x)
            out[start : start + len(batch)] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return out


class _Features(torch.nn.Module):
    """An embedder's `features` as a module (what is exported to ONNX)."""

    def __init__(self, embedder: TorchEmbedder) -> None:
        super().__init__()
        self.model = embedder.model
        self._embedder = embedder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embedder.features(x)
